"""The Dockerfile: what it promises, checked without a Docker engine (this
machine has none), and its HEALTHCHECK command run as written against a real
daemon."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

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
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


def test_slim_base_non_root_user_volume_entrypoint() -> None:
    words = [w for w, _ in instructions()]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", one("FROM"))
    user = one("USER")
    assert user not in ("root", "0")
    assert words.index("USER") < words.index("ENTRYPOINT")
    assert one("VOLUME") == "/data"
    assert "LIGHTHOUSE_DATA_DIR=/data" in " ".join(r for w, r in instructions() if w == "ENV")
    assert json.loads(one("ENTRYPOINT")) == ["lighthouse-store", "serve"]
    assert re.search(r"--interval=\d+s", one("HEALTHCHECK"))


def test_the_healthcheck_passes_on_a_serving_daemon_and_fails_without_one(
    tmp_path: Path,
) -> None:
    command = healthcheck_command()
    with DaemonProcess(tmp_path / "data") as daemon:
        env = {**os.environ, "LIGHTHOUSE_LISTEN": f"0.0.0.0:{daemon.address.rsplit(':', 1)[1]}"}
        assert subprocess.run(command, env=env, timeout=30).returncode == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LIGHTHOUSE_LISTEN": f"0.0.0.0:{port}"}
    result = subprocess.run(command, env=env, timeout=30, capture_output=True)
    assert result.returncode != 0
