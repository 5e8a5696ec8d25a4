"""The README's grpcurl examples work exactly as written (real grpcurl, real daemon)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from support import append, events, grpcurl_path

from lighthouse_store.testing import DaemonProcess, corrupt_record

README = Path(__file__).resolve().parent.parent / "README.md"
README_ADDRESS = "127.0.0.1:50051"


def readme_grpcurl_commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("grpcurl ")]


def test_readme_grpcurl_examples_run_as_written(daemon: DaemonProcess) -> None:
    commands = readme_grpcurl_commands()
    assert len(commands) >= 6, "README lost its grpcurl examples"
    # Each command's output, by its last argument and its request body; twice:
    # the Append example is an idempotent retry, so both runs answer the same.
    outputs: dict[tuple[str, str], list[str]] = {}
    for argv in commands * 2:
        key = (argv[-1], argv[argv.index("-d") + 1] if "-d" in argv else "")
        assert README_ADDRESS in argv
        argv = [daemon.address if a == README_ADDRESS else a for a in argv]
        argv[0] = str(grpcurl_path())
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr}"
        outputs.setdefault(key, []).append(proc.stdout)

    def output(method: str, body: str = "") -> str:
        (key,) = [k for k in outputs if k[0] == method and body in k[1]]
        return outputs[key][0]

    service = "lighthouse.store.v1.EventStoreService"
    assert service in output("list")
    assert "rpc Append" in output(service)
    (append_key,) = [k for k in outputs if k[0] == f"{service}/Append"]
    appended = [json.loads(out) for out in outputs[append_key]]
    # -emit-defaults prints revision 0; the retry returns the original result
    assert appended == [{"first_position": "1", "last_position": "1", "last_revision": "0"}] * 2
    for body in ('"stream": "orders-1"', '"stream": "$all"'):
        (event,) = json.loads(output(f"{service}/Read", body))["events"]
        assert event["event_type"] == "OrderPlaced" and event["stream"] == "orders-1"
        assert event["event_id"] == "0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d"
    got = json.loads(output(f"{service}/GetEvent"))
    assert got["event"]["event_id"] == "0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d"
    info = json.loads(output(f"{service}/GetInfo"))
    assert info["head_position"] == "1" and info["durability"] == "DURABILITY_FSYNC"
    assert json.loads(output("grpc.health.v1.Health/Check")) == {"status": "SERVING"}


def readme_python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_as_written_and_again(daemon: DaemonProcess) -> None:
    examples = readme_python_examples()
    assert len(examples) >= 4, "README lost its client examples"
    for code in examples * 2:  # a reader runs an example more than once
        assert README_ADDRESS in code
        proc = subprocess.run(
            [sys.executable, "-c", code.replace(README_ADDRESS, daemon.address)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{code}\n{proc.stderr}"
        assert proc.stdout.strip(), code


def test_readme_path_line_finds_the_dev_setup_s_grpcurl() -> None:
    """The `export PATH=...` line of the grpcurl block, run as written from the
    repo (where `./dev` puts `.venv`), makes `grpcurl` the dev setup's."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    exports = [line for b in blocks for line in b.splitlines() if line.startswith("export PATH=")]
    assert len(exports) == 1, exports
    root = README.parent
    proc = subprocess.run(
        ["bash", "-c", f"{exports[0]}\ncommand -v grpcurl"],
        cwd=root, capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == root / ".venv" / "bin" / "grpcurl"


def test_readme_links_stay_inside_the_repository() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)]+)\)", text)
    assert targets, "README lost its links"
    for target in targets:
        assert "://" not in target and not target.startswith(("/", "..")), target
        assert (README.parent / target.split("#")[0]).exists(), target
    assert "../" not in text and "http://" not in text and "https://" not in text


def readme_tool_commands() -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("lighthouse-store ")
            and not line.startswith("lighthouse-store admin ")]  # fmt: skip


def test_readme_admin_commands_run_as_written(tmp_path: Path) -> None:
    """Operations, Degradation: degrade, status, recover, against a daemon
    on the address ``LIGHTHOUSE_LISTEN`` names."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    commands = [shlex.split(line) for block in blocks for line in block.splitlines()
                if line.startswith("lighthouse-store admin ")]  # fmt: skip
    assert [c[2] for c in commands] == ["degrade", "status", "recover"]
    with DaemonProcess(tmp_path / "data") as daemon:
        env = {**os.environ, "LIGHTHOUSE_LISTEN": daemon.address}
        levels = []
        for argv in commands:
            proc = subprocess.run(
                [sys.executable, "-m", "lighthouse_store", *argv[1:]], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr}"
            levels.append(json.loads(proc.stdout)["level"])
        assert levels == ["degraded", "degraded", "normal"]


def test_readme_tool_commands_run_as_written(tmp_path: Path) -> None:
    """The operator's commands of "Integrity, backup and restore", in a
    working directory whose ``data`` a daemon serves (verify, stats, backup
    beside it), then, stopped, restore, repair, and repair with
    ``--quarantine 1234`` of a record corrupted at that position."""
    commands = readme_tool_commands()
    assert [c[1] for c in commands] == ["verify", "stats", "backup", "restore", "repair", "repair"]
    daemon = DaemonProcess(tmp_path / "data")
    with daemon:
        stub = daemon.stub()
        for i in range(13):
            append(stub, f"s{i % 3}", events(100))

        def run(argv: list[str]) -> dict[str, Any]:
            proc = subprocess.run(
                [sys.executable, "-m", "lighthouse_store", *argv[1:]], cwd=tmp_path,
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stderr}"
            output: dict[str, Any] = json.loads(proc.stdout)
            return output

        assert run(commands[0])["ok"] is True
        assert run(commands[1])["events"] == 1300
        assert run(commands[2])["head_position"] == 1300
    assert run(commands[3])["restored"] is True
    assert run(commands[4])["repaired"] is True
    corrupt_record(tmp_path / "data", 1234)
    (quarantined,) = run(commands[5])["quarantined"]
    assert quarantined["position"] == 1234
