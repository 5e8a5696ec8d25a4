"""The client library's in-process A/B (``perf/client_ab.py``) runs against a
base revision: a smoke run, no speed is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_client_ab_compares_this_tree_with_a_base_revision() -> None:
    proc = subprocess.run(
        [sys.executable, "perf/client_ab.py", "--base", "HEAD", "--rounds", "1",
         "--events", "900", "--calls", "5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("  ")[0]: line.split() for line in proc.stdout.splitlines()}
    for measure in (
        "replay",
        "replay + 1 field",
        "subscribe",
        "sync subscribe",
        "append (event loop)",
        "sync append",
    ):
        assert measure in rows, proc.stdout
        stubs, base, new = (float(x.replace(",", "")) for x in rows[measure][-6:-3])
        assert stubs > 0 and base > 0 and new > 0, rows[measure]
