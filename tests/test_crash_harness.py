"""kill -9 cycles under mixed load (crash_harness.py): appends from several
clients, a named consumer's acks, a backup running in some cycles, one
process in some cycles and a supervisor with two workers in others.

``CRASH_CYCLES=50 .venv/bin/pytest -s tests/test_crash_harness.py`` runs 50
cycles (10 by default, in CI); ``CRASH_SEED`` picks the random choices (kill
points, sizes), printed with the counts at the end."""

from __future__ import annotations

import os
import random
from pathlib import Path

from crash_harness import CrashHarness
from support import DaemonFactory

CYCLES = int(os.environ.get("CRASH_CYCLES", "10"))
SEED = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))


def test_kill9_cycles_lose_no_acknowledged_event(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory(start=False)
    harness = CrashHarness(d, tmp_path, SEED)
    print(f"crash harness: {CYCLES} cycles, CRASH_SEED={SEED}")
    for n in range(CYCLES):
        harness.cycle(n, workers=2 if n % 3 == 1 else 1, backup=n % 2 == 0)
    harness.finish()
    t = harness.totals
    print(
        f"crash harness: {t.cycles} kill -9 cycles ({t.worker_cycles} with 2 workers,"
        f" {t.backups} with a backup), {t.acknowledged} events acknowledged"
        f" ({t.retried} appends retried after a kill), {t.checked} checked in the log,"
        f" {t.consumer_received} delivered to the consumer (checkpoint {t.confirmed}"
        f" confirmed), {t.seconds:.1f} s in cycles"
    )
    assert t.cycles == CYCLES and t.acknowledged > 0
    assert t.worker_cycles > 0 or CYCLES < 2
    assert t.confirmed > 0, "no ack was ever confirmed: the checkpoint check saw nothing"
