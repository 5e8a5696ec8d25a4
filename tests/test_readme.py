"""The README's grpcurl examples work exactly as written (real grpcurl, real daemon)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from lighthouse_store.testing import DaemonProcess

README = Path(__file__).resolve().parent.parent / "README.md"
GRPCURL = Path(sys.executable).parent / "grpcurl"
README_ADDRESS = "127.0.0.1:50051"


def readme_grpcurl_commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("grpcurl ")]


def test_readme_grpcurl_examples_run_as_written(daemon: DaemonProcess) -> None:
    commands = readme_grpcurl_commands()
    assert len(commands) >= 6, "README lost its grpcurl examples"
    outputs: dict[str, str] = {}
    for argv in commands * 2:  # twice: the Append example is an idempotent retry
        assert README_ADDRESS in argv
        argv = [daemon.address if a == README_ADDRESS else a for a in argv]
        argv[0] = str(GRPCURL)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr}"
        outputs[argv[-1]] = proc.stdout
    assert "lighthouse.store.v1.EventStoreService" in outputs["list"]
    assert "rpc Append" in outputs["lighthouse.store.v1.EventStoreService"]
    append = json.loads(outputs["lighthouse.store.v1.EventStoreService/Append"])
    assert append == {"first_position": "1", "last_position": "1"}  # revision 0 is not printed
    read = json.loads(outputs["lighthouse.store.v1.EventStoreService/Read"])
    (event,) = read["events"]
    assert event["event_type"] == "OrderPlaced" and event["stream"] == "orders-1"
    got = json.loads(outputs["lighthouse.store.v1.EventStoreService/GetEvent"])
    assert got["event"]["event_id"] == "0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d"
    info = json.loads(outputs["lighthouse.store.v1.EventStoreService/GetInfo"])
    assert info["head_position"] == "1" and info["durability"] == "DURABILITY_FSYNC"
    assert json.loads(outputs["grpc.health.v1.Health/Check"]) == {"status": "SERVING"}


def readme_python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_as_written(daemon: DaemonProcess) -> None:
    examples = readme_python_examples()
    assert len(examples) >= 4, "README lost its client examples"
    for code in examples:
        assert README_ADDRESS in code
        proc = subprocess.run(
            [sys.executable, "-c", code.replace(README_ADDRESS, daemon.address)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{code}\n{proc.stderr}"
        assert proc.stdout.strip(), code
