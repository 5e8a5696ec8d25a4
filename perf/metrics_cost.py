#!/usr/bin/env python3
"""What the metrics cost per append, in-process, without the daemon's noise.

    .venv/bin/python perf/metrics_cost.py [--appends 20000] [--rounds 5]

Runs what the daemon's metrics do for one single-event append that commits
in a group of its own (``metrics.py``: the guard's counter and histogram, the
writer's ``on_busy`` and commit listener), ``--appends`` times per round,
with ``--metrics on`` and with ``--metrics off`` (the gauges the health
check reads stay), in both value stores: this process's memory (``--workers
1``) and prometheus-client's multiprocess files (a worker; measured in a
child process started with ``PROMETHEUS_MULTIPROC_DIR`` set to a temp dir,
as the supervisor starts workers). Prints the median µs per append of each,
and the difference on - off: what ``--compare-metrics`` compares, to set
against the daemon's CPU per append (``perf/daemon_cpu.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from lighthouse_store.writer import CommitInfo


class _Writer:
    """What the commit listener reads of the writer."""

    pending = 0
    pending_bytes = 0


def measure(appends: int, rounds: int, instruments: bool) -> float:
    """Median µs per append over ``rounds``."""
    from prometheus_client import CollectorRegistry

    from lighthouse_store.metrics import DaemonMetrics

    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    metrics = DaemonMetrics(None if multiprocess else CollectorRegistry(), instruments=instruments)
    listener = metrics.commit_listener(_Writer())  # type: ignore[arg-type]
    info = CommitInfo(head=1, appends=1, checkpoints={}, seconds=0.0008, events=1, bytes=1100,
                      flush_seconds=0.0006)  # fmt: skip
    rpc = metrics.rpc["Append"]
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(appends):
            if rpc is not None:  # servicer._guard
                rpc.requests.inc()
            metrics.writer_busy()
            listener(info)
            if rpc is not None and rpc.duration is not None:
                rpc.duration.observe(0.0009)
        per_round.append((time.perf_counter() - started) / appends * 1e6)
    return statistics.median(per_round)


def child(appends: int, rounds: int) -> dict[str, float]:
    return {"on": measure(appends, rounds, True), "off": measure(appends, rounds, False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (1 <= args.appends <= 1_000_000 and 1 <= args.rounds <= 50):
        parser.error("--appends 1..1000000, --rounds 1..50")
    if args.child:
        print(json.dumps(child(args.appends, args.rounds)))
        return 0
    memory = child(args.appends, args.rounds)
    with tempfile.TemporaryDirectory(prefix="lighthouse-metrics-cost-") as directory:
        out = subprocess.run(
            [sys.executable, __file__, "--child", f"--appends={args.appends}",
             f"--rounds={args.rounds}"],
            env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory),
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
    files = json.loads(out.stdout)
    print(f"metrics per single-event append (its own group commit), median of {args.rounds}"
          f" rounds of {args.appends:,}, µs:")  # fmt: skip
    for name, r in (("one process (memory)", memory), ("worker (multiprocess files)", files)):
        print(f"  {name:<28} on {r['on']:6.2f}   off {r['off']:6.2f}"
              f"   on - off {r['on'] - r['off']:6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
