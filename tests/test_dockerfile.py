"""The Dockerfile: what it promises, checked without a Docker engine (this
machine has none), and its HEALTHCHECK command run as written against a real
daemon. tests/test_container.py builds the image and runs it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lighthouse_store.testing import DaemonProcess

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def one(name: str) -> str:
    (value,) = [rest for word, rest in instructions() if word == name]
    return value


def healthcheck_command() -> list[str]:
    args = one("HEALTHCHECK")
    command: list[str] = json.loads(args[args.index("CMD") + 3 :].strip())
    return [sys.executable if command[0] == "python3" else command[0], *command[1:]]


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on, once closed
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_base_argument_non_root_user_loopback_volume_entrypoint() -> None:
    words = [w for w, _ in instructions()]
    assert re.fullmatch(r"BASE_IMAGE=python:3\.1[1-9]-slim", one("ARG"))
    assert one("FROM") == "${BASE_IMAGE}"
    user = one("USER")
    assert user not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert one("VOLUME") == "/data"
    env = " ".join(r for w, r in instructions() if w == "ENV").split()
    assert "LIGHTHOUSE_DATA_DIR=/data" in env
    assert "LIGHTHOUSE_LISTEN=127.0.0.1:50051" in env  # loopback unless told otherwise
    assert json.loads(one("ENTRYPOINT")) == ["lighthouse-store", "serve"]
    assert re.search(r"--interval=\d+s", one("HEALTHCHECK"))
    assert "/health" in one("HEALTHCHECK")


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "0.0.0.0:{port}", "off"])
def test_the_healthcheck_fails_when_nothing_answers(address: str) -> None:
    env = {**os.environ, "LIGHTHOUSE_HTTP_LISTEN": address.format(port=free_port())}
    result = subprocess.run(healthcheck_command(), env=env, timeout=30, capture_output=True)
    assert result.returncode != 0


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_the_healthcheck_passes_on_a_serving_daemon(tmp_path: Path, host: str) -> None:
    port = free_port()
    args = ["--http-listen", f"127.0.0.1:{port}"]
    with DaemonProcess(tmp_path / "data", extra_args=args):
        env = {**os.environ, "LIGHTHOUSE_HTTP_LISTEN": f"{host}:{port}"}
        result = subprocess.run(healthcheck_command(), env=env, timeout=30, capture_output=True)
        assert result.returncode == 0, result.stderr
