# Lighthouse Store daemon image (README, Operations, "Container").
#
#   docker build -t lighthouse-store .
#   docker run -d --name lighthouse -v lighthouse-data:/data lighthouse-store
#   docker stop -t 30 lighthouse   # SIGTERM; the daemon drains in-flight calls
#
# The daemon listens on the container's loopback only, as it does outside one:
# until TLS and tokens exist, publishing the gRPC port is an explicit choice:
#   docker run -d -e LIGHTHOUSE_LISTEN=0.0.0.0:50051 -p 127.0.0.1:50051:50051 \
#       -v lighthouse-data:/data lighthouse-store
# Flags after the image name go to `lighthouse-store serve` (e.g. --durability
# async). Set the addresses with -e LIGHTHOUSE_LISTEN / LIGHTHOUSE_HTTP_LISTEN,
# not with flags: the HEALTHCHECK reads the variable. Variables beat a --config
# file, so set these two with -e, not in the file.
#
# Any base with Python 3.11+ (python3 -m venv) and useradd will do; where
# Docker Hub is out of reach, name another: --build-arg BASE_IMAGE=... (CI
# builds on a Debian bookworm made with debootstrap, tests/test_container.py).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The protocol package (generated code; the daemon depends on it), then the
# daemon, with the same pinned versions as development and CI, into a virtual
# environment: a distribution's Python refuses pip installs into its own
# site-packages (PEP 668). Every dependency has a binary wheel for CPython
# 3.11+, so no compiler is needed.
COPY . /src
RUN python3 -m venv /opt/lighthouse \
    && /opt/lighthouse/bin/pip install --quiet -c /src/constraints.txt /src/protos /src \
    && rm -rf /src
ENV PATH=/opt/lighthouse/bin:$PATH

RUN useradd --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin lighthouse \
    && mkdir /data \
    && chown lighthouse:lighthouse /data
USER lighthouse
VOLUME /data

# gRPC on the container's loopback (see above); the HTTP operations endpoint
# (/health, /metrics) keeps its own default, 127.0.0.1:9464.
ENV LIGHTHOUSE_DATA_DIR=/data \
    LIGHTHOUSE_LISTEN=127.0.0.1:50051
EXPOSE 50051 9464

# GET /health on the address in LIGHTHOUSE_HTTP_LISTEN (a wildcard host means
# loopback): 200 while the store serves reads and writes; a 503 (say, the
# store cannot write), no answer or LIGHTHOUSE_HTTP_LISTEN=off exits 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; h, _, p = os.environ.get('LIGHTHOUSE_HTTP_LISTEN', '127.0.0.1:9464').rpartition(':'); h = {'': '127.0.0.1', '0.0.0.0': '127.0.0.1', '[::]': '[::1]'}.get(h, h); urllib.request.urlopen(f'http://{h}:{p}/health', timeout=3)"]

ENTRYPOINT ["lighthouse-store", "serve"]
