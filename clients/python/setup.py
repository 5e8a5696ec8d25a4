"""Build script for the client: pyproject.toml holds everything but the
dependency list, which is here because one entry is computed.

The client depends on ``lighthouse-store-proto`` (the generated code and the
constants it shares with the daemon, built from ``protos/``), which no package
index has. Built from a checkout, the requirement points at that directory, so
``pip install ./clients/python`` works alone; built elsewhere, it is the bare
name, to be satisfied by whoever installs it.
"""

from pathlib import Path

from setuptools import setup

PROTO_DIR = Path(__file__).resolve().parents[2] / "protos"


def proto_requirement() -> str:
    if (PROTO_DIR / "pyproject.toml").is_file():
        return f"lighthouse-store-proto @ {PROTO_DIR.as_uri()}"
    return "lighthouse-store-proto"


setup(
    install_requires=[
        proto_requirement(),
        "grpcio>=1.85.1,<2",
        "protobuf>=7.35.1,<8",
        "tenacity>=8.3,<10",  # RetryCallState.upcoming_sleep (_retry.py)
        # The on-disk read cache and the outbox are LMDB directories.
        "lmdb>=1.6,<4",
    ]
)
