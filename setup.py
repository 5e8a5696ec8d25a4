"""Build script for the daemon: pyproject.toml holds everything but the
dependency list, which is here because one entry is computed.

The daemon depends on ``lighthouse-store-proto`` (the generated code and the
shared constants, built from ``protos/``), which no package index has. Built
from a checkout, the requirement points at that directory, so ``pip install .``
works alone; built elsewhere (an sdist without ``protos/``), it is the bare
name, to be satisfied by whoever installs it.
"""

from pathlib import Path

from setuptools import setup

PROTO_DIR = Path(__file__).resolve().parent / "protos"


def proto_requirement() -> str:
    if (PROTO_DIR / "pyproject.toml").is_file():
        return f"lighthouse-store-proto @ {PROTO_DIR.as_uri()}"
    return "lighthouse-store-proto"


setup(
    install_requires=[
        proto_requirement(),
        "grpcio>=1.85.1,<2",
        "grpcio-health-checking>=1.85,<2",
        "grpcio-reflection>=1.85,<2",
        "grpcio-status>=1.85,<2",
        "protobuf>=7.35.1,<8",
        "lmdb>=1.6,<4",
        "zlib-ng>=0.5,<2",  # vectorized CRC-32 for record checksums (same values as zlib's)
        "python-json-logger>=4.2,<5",  # the JSON log formatter (logs.py)
        # Tracing (tracing.py): imported only when OTEL_TRACES_EXPORTER asks for it;
        # the API alone also gives log lines the current span's ids (logs.py).
        "opentelemetry-api>=1.45,<2",
        "opentelemetry-sdk>=1.45,<2",
        "opentelemetry-instrumentation-grpc>=0.66b2",
        "opentelemetry-exporter-otlp-proto-grpc>=1.45,<2",
    ]
)
