#!/usr/bin/env python3
"""Where a call's CPU goes, thread by thread: the daemon against the echo server.

    .venv/bin/python perf/daemon_cpu.py [--calls 1500] [--rounds 3] [--events 1 --events 100]

One sequential client (the harness's own ``workloads.SyncClient``, in this
process) calls the empty-RPC echo server, then the daemon with appends of
each ``--events`` count (1 KiB events, fsync durability, a new data dir for
each count). Around each of ``--rounds`` rounds of ``--calls`` calls it reads
``/proc/PID/task/*``: CPU time (``schedstat``, nanoseconds), its user and
system parts (``stat``, clock ticks) and voluntary context switches
(``status``) of every thread, summed by thread name (the daemon names its
threads: ``lh-writer``, ``lh-prealloc``, ``lh-reader``; gRPC's are
``event_engine``; ``main`` is the event loop; gRPC's asyncio poller is the
other ``python`` thread). It prints, per server and thread, the median per
call over the rounds, and the wall time per call.

Linux only. Every loop is bounded by ``--calls`` and by ``--round-cap``
seconds; each server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import echo_server
from workloads import Result, Spec, SyncClient

from lighthouse_store.testing import DaemonProcess

PERF_DIR = Path(__file__).resolve().parent
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")

# name -> (cpu ns, user ns, system ns, voluntary switches)
Sample = dict[str, tuple[float, float, float, int]]


def threads(pid: int) -> Sample:
    """Every thread of ``pid`` now, summed by name ("main" for the main thread)."""
    total: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            cpu_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        switches = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        t = total[name]
        t[0] += cpu_ns
        t[1] += int(fields[11]) * TICK_NS
        t[2] += int(fields[12]) * TICK_NS
        t[3] += switches
    return {k: (v[0], v[1], v[2], int(v[3])) for k, v in total.items()}


def per_call(before: Sample, after: Sample, calls: int) -> dict[str, tuple[float, ...]]:
    """CPU µs, user µs, system µs and switches per call, by thread name."""
    out = {}
    for name, a in after.items():
        b = before.get(name, (0.0, 0.0, 0.0, 0))
        out[name] = tuple((a[i] - b[i]) / calls / (1 if i == 3 else 1e3) for i in range(4))
    return out


def measure(pid: int, spec: Spec, rounds: int) -> tuple[float, dict[str, tuple[float, ...]]]:
    """Median wall µs per call and median per-thread figures over ``rounds``."""
    client = SyncClient(spec, 0)
    walls: list[float] = []
    figures: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    try:
        client.warmup()
        for _ in range(rounds):
            client.result = res = Result()
            before = threads(pid)
            client.run(time.monotonic_ns())
            after = threads(pid)
            if res.errors or not res.calls:
                raise RuntimeError(f"{res.errors} failed calls; first: {res.first_error}")
            walls.append((res.end_ns - res.start_ns) / res.calls / 1e3)
            for name, row in per_call(before, after, res.calls).items():
                figures[name].append(row)
    finally:
        client.close()
    medians = {
        name: tuple(statistics.median(r[i] for r in rows) for i in range(4))
        for name, rows in figures.items()
    }
    return statistics.median(walls), medians


def show(title: str, wall_us: float, rows: dict[str, tuple[float, ...]]) -> None:
    print(f"{title}: {wall_us:,.0f} µs per call (wall)")
    print(f"  {'thread':14s} {'CPU µs':>8s} {'user':>7s} {'sys':>7s} {'switches':>9s}   per call")
    shown = sorted(rows.items(), key=lambda kv: -kv[1][0])
    for name, (cpu, user, system, switches) in shown:
        if cpu >= 1 or switches >= 0.05:
            print(f"  {name:14s} {cpu:8.0f} {user:7.0f} {system:7.0f} {switches:9.2f}")
    cpu_all = sum(r[0] for r in rows.values())
    switches_all = sum(r[3] for r in rows.values())
    print(f"  {'all':14s} {cpu_all:8.0f} {'':7s} {'':7s} {switches_all:9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, action="append", help="events per append")
    parser.add_argument("--round-cap", type=float, default=30.0, help="seconds per round, at most")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        parser.error("reads /proc: Linux only")
    counts = args.events or [1, 100]
    work = Path(tempfile.mkdtemp(prefix="lighthouse-cpu-"))
    try:
        echo = echo_server.EchoServer(PERF_DIR / "echo_server.py", work / "echo.log")
        echo.start()
        try:
            spec = Spec("echo", echo.address, duration_s=args.round_cap, max_calls=args.calls,
                        warmup_calls=100)
            show("echo server, empty call", *measure(echo.pid, spec, args.rounds))
        finally:
            echo.stop()
        for n in counts:
            daemon = DaemonProcess(work / f"data-{n}", extra_args=["--durability", "fsync"])
            daemon.start()
            try:
                spec = Spec("append", daemon.address, duration_s=args.round_cap,
                            max_calls=args.calls, warmup_calls=100, events_per_call=n)
                show(f"daemon, append of {n} event(s)", *measure(daemon.pid, spec, args.rounds))
            finally:
                daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
