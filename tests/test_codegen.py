"""The protocol tooling: buf lint is clean and the checked-in generated code is
what scripts/generate_protos.py produces (real buf, real protoc)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def buf() -> str:
    path = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    assert path, "buf is not installed (the dev extra installs buf-bin)"
    return path


def test_buf_lint_is_clean() -> None:
    proc = subprocess.run([buf(), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_buf_lint_catches_a_violation(tmp_path: Path) -> None:
    # The check above can fail: a copy of the module with a lint error is rejected.
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    proto = tmp_path / "protos" / "lighthouse" / "store" / "v1" / "store.proto"
    proto.write_text(proto.read_text() + "\nmessage bad_name {}\n")
    proc = subprocess.run(
        [buf(), "lint"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and "bad_name" in proc.stdout + proc.stderr


def test_generated_code_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def test_generated_code_check_catches_drift(tmp_path: Path) -> None:
    # Run the generator's --check against a copy whose generated file was edited.
    for part in ("protos", "scripts", "clients"):
        shutil.copytree(
            ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    generated = tmp_path / "protos/lighthouse_proto/v1/store_pb2.py"
    generated.write_text(generated.read_text() + "\n# hand edit\n")
    proc = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "out of date" in proc.stderr
