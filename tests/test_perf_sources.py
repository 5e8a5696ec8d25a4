"""Another checkout's daemon in the perf tools (``perf/sources.py``): which
flags it is given, and what it runs."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from sources import Source, SourceDaemon  # noqa: E402

OLD = Source(
    Path("/old"), "/old/.venv/bin/python", frozenset({"--durability", "--listen", "--data-dir"})
)


def test_flags_a_source_does_not_know_are_left_out_with_their_values() -> None:
    args = ["--workers", "1", "--durability", "fsync", "--workers=2", "--max-batch-appends", "1"]
    assert OLD.known(args) == ["--durability", "fsync"]
    assert OLD.known(["--durability=async", "--tail-bytes=0"]) == ["--durability=async"]


def test_a_source_s_daemon_runs_with_its_interpreter_in_its_checkout(tmp_path: Path) -> None:
    daemon = SourceDaemon(OLD, tmp_path / "data", ["--durability", "fsync", "--workers=2"])
    command = daemon.command()
    assert command[:4] == ["/old/.venv/bin/python", "-m", "lighthouse_store", "serve"]
    assert "--workers" not in command and "--workers=2" not in command
    assert command[command.index("--durability") + 1] == "fsync"
    assert command[command.index("--data-dir") + 1] == str(tmp_path / "data")
    assert daemon.cwd == Path("/old")


def test_this_checkout_knows_its_own_flags() -> None:
    here = Source.at(ROOT)
    assert {"--workers", "--durability", "--max-batch-appends"} <= here.flags
    assert here.known(["--workers", "2"]) == ["--workers", "2"]
