# Lighthouse Store daemon image.
#
#   docker build -t lighthouse-store .
#   docker run -d --name lighthouse -p 50051:50051 -v lighthouse-data:/data lighthouse-store
#   docker stop -t 30 lighthouse   # SIGTERM; the daemon drains in-flight calls
#
# Flags after the image name go to `lighthouse-store serve` (e.g. --durability async).
# Change the port with -e LIGHTHOUSE_LISTEN=0.0.0.0:PORT, not --listen: the
# HEALTHCHECK below probes the port that variable names.
# The image sets LIGHTHOUSE_DATA_DIR and LIGHTHOUSE_LISTEN, and variables beat
# a --config file: set those two with -e, not in the file.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The protocol package (generated code; the daemon depends on it), then the
# daemon, with the same pinned versions as development and CI. Every
# dependency has a binary wheel for CPython 3.12, so no compiler is needed.
COPY . /src
RUN pip install -c /src/constraints.txt /src/protos /src \
    && rm -rf /src

RUN useradd --system --uid 10001 --user-group --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin lighthouse \
    && mkdir /data \
    && chown lighthouse:lighthouse /data
USER lighthouse
VOLUME /data

# Inside a container the daemon must listen on all interfaces, or nothing
# outside the container can reach it (the daemon's own default is 127.0.0.1).
ENV LIGHTHOUSE_DATA_DIR=/data \
    LIGHTHOUSE_LISTEN=0.0.0.0:50051
EXPOSE 50051

# gRPC health (grpc.health.v1) on the port in LIGHTHOUSE_LISTEN, over loopback;
# any error or a status other than SERVING exits 1 (unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg; port = os.environ.get('LIGHTHOUSE_LISTEN', ':50051').rsplit(':', 1)[1]; r = hg.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(), timeout=3); raise SystemExit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["lighthouse-store", "serve"]
