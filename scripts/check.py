"""The whole check suite, as CI runs it: ``./dev test`` (extra args go to pytest).

1. ruff (lint) over the tree;
2. mypy --strict (configured in pyproject.toml);
3. buf breaking against the previous commit's protos (when git history has one);
4. pytest, on every core (pytest-xdist): unit tests, the store contract tests
   and the integration tests against real daemons (these include ``buf lint``
   and the check that the generated code is up to date).

Stops at the first failing step and exits with its code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(title: str, cmd: list[str]) -> None:
    print(f"==> {title}: {' '.join(cmd)}", flush=True)
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        print(f"==> {title} FAILED (exit {code})", flush=True)
        raise SystemExit(code)


def buf_breaking() -> None:
    buf = shutil.which("buf", path=str(BIN)) or "buf"
    probe = subprocess.run(
        ["git", "cat-file", "-e", "HEAD~1:protos"], cwd=ROOT, capture_output=True
    )
    if probe.returncode != 0:
        print("==> buf breaking: not run (no previous commit with protos/ in this clone)")
        return
    run("buf breaking", [buf, "breaking", "--against", ".git#ref=HEAD~1"])


def main() -> int:
    run("ruff", [str(BIN / "ruff"), "check", "."])
    run("mypy", [str(BIN / "mypy")])
    buf_breaking()
    args = sys.argv[1:]
    if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in args):
        # Most tests wait on a real daemon (start-up, fsync), so two or more
        # processes finish sooner even on 2 cores; a module's tests stay in one
        # process, so module-scoped daemons start once.
        args = ["-n", "auto", "--dist", "loadfile", *args]
    run("pytest", [sys.executable, "-m", "pytest", *args])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
