#!/usr/bin/env python3
"""Where a call's CPU goes, thread by thread: the daemon against the echo server.

    .venv/bin/python perf/daemon_cpu.py [--calls 1500] [--rounds 3] [--events 1 --events 100]
                                        [--daemon-arg=--tail-bytes=0]

One sequential client (the harness's own ``workloads.SyncClient``, in this
process) calls the empty-RPC echo server, then the daemon with appends of
each ``--events`` count (1 KiB events, fsync durability plus any
``--daemon-arg`` flags, a new data dir for each count). Around each of
``--rounds`` rounds of ``--calls`` calls it reads ``/proc/PID/task/*`` for
every thread: its CPU time (``schedstat``, in nanoseconds), split into user
and system time by the ratio of its clock ticks in ``stat`` (shown only when a
round has at least 20 ticks; less is noise), and
its context switches from ``status``: "waits" (voluntary: the thread blocked)
and "preempted" (involuntary). Threads are summed by name: the daemon names its
threads (``lh-writer``, ``lh-prealloc``, ``lh-reader_N``); gRPC's are
``event_engine``; ``main`` is the event loop; gRPC's asyncio poller is the
other ``python`` thread. It prints, per server and thread, the median per call
over the rounds ("all": the whole process), and the wall time per call. A
thread that ends during a round loses what it did in that round, and the
output says so.

Linux only. Every loop is bounded by ``--calls`` and by ``--round-cap``
seconds; each server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import astuple, dataclass
from pathlib import Path

import echo_server
from workloads import Result, Spec, SyncClient

from lighthouse_store.testing import DaemonProcess

PERF_DIR = Path(__file__).resolve().parent
MIN_TICKS = 20  # below this many clock ticks, a user/system split is noise


@dataclass
class Row:
    """One thread's (or a name's) CPU and context switches, cumulative or per call."""

    cpu_ns: float = 0.0  # schedstat: time on a CPU
    user_ticks: float = 0.0
    system_ticks: float = 0.0
    voluntary: float = 0.0  # switches because the thread waited
    involuntary: float = 0.0  # switches because the scheduler took the CPU away

    def minus(self, other: Row) -> Row:
        return Row(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def plus(self, other: Row) -> Row:
        return Row(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


Threads = dict[int, tuple[str, Row]]  # thread id -> name, counters


def threads(pid: int) -> Threads:
    """Every thread of ``pid`` now, by thread id: its name ("main" for the
    main thread) and its counters."""
    out: dict[int, tuple[str, Row]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text(errors="replace")
            cpu_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text(errors="replace")
        except OSError:  # the thread ended meanwhile
            continue
        name = "main" if task.name == str(pid) else stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, state
        vol = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        invol = int(status.split("\nnonvoluntary_ctxt_switches:")[1].split()[0])
        out[int(task.name)] = (name, Row(cpu_ns, int(fields[11]), int(fields[12]), vol, invol))
    return out


def per_name(before: Threads, after: Threads) -> tuple[dict[str, Row], int]:
    """What each thread name did between the two samples (threads summed by
    name, new threads from zero), and how many threads ended in between (what
    they did after ``before`` is lost)."""
    total: dict[str, Row] = {}
    for tid, (name, row) in after.items():
        done = row.minus(before[tid][1]) if tid in before else row
        total[name] = total.get(name, Row()).plus(done)
    return total, len(before.keys() - after.keys())


def measure(pid: int, spec: Spec, rounds: int) -> tuple[float, dict[str, Row], int]:
    """Median wall µs per call, the median per call of each figure by thread
    name (and of the whole process, as "all"), and the threads that ended."""
    client = SyncClient(spec, 0)
    walls: list[float] = []
    figures: dict[str, list[Row]] = defaultdict(list)
    ended = 0
    try:
        client.warmup()
        for _ in range(rounds):
            client.result = res = Result()
            before = threads(pid)
            client.run(time.monotonic_ns())
            after = threads(pid)
            if res.errors or not res.calls:
                raise RuntimeError(
                    f"{res.calls} calls, {res.errors} failed; first: {res.first_error}"
                )
            walls.append((res.end_ns - res.start_ns) / res.calls / 1e3)
            done, gone = per_name(before, after)
            ended += gone
            if not any(row.cpu_ns for row in done.values()):
                raise RuntimeError("schedstat reads 0: this kernel keeps no per-thread CPU time")
            done["all"] = functools.reduce(Row.plus, done.values(), Row())
            for name, row in done.items():
                figures[name].append(Row(*(v / res.calls for v in astuple(row))))
    finally:
        client.close()
    medians = {
        name: Row(*(statistics.median(astuple(r)[i] for r in rows) for i in range(5)))
        for name, rows in figures.items()
    }
    return statistics.median(walls), medians, ended


def show(title: str, wall_us: float, rows: dict[str, Row], ended: int, calls: int) -> None:
    print(f"{title}: {wall_us:,.0f} µs per call (wall)")
    heads = f"{'CPU µs':>8s} {'user':>6s} {'system':>7s} {'waits':>6s} {'preempted':>10s}"
    print(f"  {'thread':14s} {heads}   per call")
    shown = sorted(rows.items(), key=lambda kv: (kv[0] == "all", -kv[1].cpu_ns))
    for name, r in shown:
        if name != "all" and r.cpu_ns < 1000 and r.voluntary < 0.05:
            continue
        ticks = (r.user_ticks + r.system_ticks) * calls
        if ticks >= MIN_TICKS:  # split the exact CPU time by the ticks' ratio
            user = r.cpu_ns * r.user_ticks / (r.user_ticks + r.system_ticks) / 1e3
            split = f"{user:6.0f} {r.cpu_ns / 1e3 - user:7.0f}"
        else:
            split = f"{'-':>6s} {'-':>7s}"
        switches = f"{r.voluntary:6.2f} {r.involuntary:10.2f}"
        print(f"  {name:14s} {r.cpu_ns / 1e3:8.0f} {split} {switches}")
    if ended:
        print(f"  ({ended} thread(s) ended during the rounds; what they did is not counted)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, action="append", help="events per append")
    parser.add_argument("--round-cap", type=float, default=30.0, help="seconds per round, at most")
    parser.add_argument(
        "--daemon-arg", action="append", default=[], help="extra daemon flag, repeatable"
    )
    args = parser.parse_args(argv)
    if min(args.calls, args.rounds, *(args.events or [1])) < 1 or args.round_cap <= 0:
        parser.error("--calls, --rounds, --events and --round-cap must be positive")
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
            show("echo server, empty call", *measure(echo.pid, spec, args.rounds), args.calls)
        finally:
            echo.stop()
        for n in counts:
            extra = ["--durability", "fsync", *args.daemon_arg]
            daemon = DaemonProcess(work / f"data-{n}", extra_args=extra)
            daemon.start()
            try:
                spec = Spec("append", daemon.address, duration_s=args.round_cap,
                            max_calls=args.calls, warmup_calls=100, events_per_call=n)
                show(f"daemon, append of {n} event(s)", *measure(daemon.pid, spec, args.rounds),
                     args.calls)
            finally:
                daemon.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
