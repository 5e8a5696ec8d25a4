"""Daemons of different flags or different code, side by side, one run,
interleaved: an A/B of a daemon setting or of a change.

    .venv/bin/python perf/append_rounds.py --config= --config=--preallocate=0
    .venv/bin/python perf/append_rounds.py --source=. --source=/tmp/old --events 1
    .venv/bin/python perf/append_rounds.py --source=. --source=/tmp/old \\
        --config=--workers=1 --config=--workers=2 --workload delivery --workload group

For each repeat, for each ``--source`` (a checkout whose ``lighthouse_store``
the daemon runs, with that checkout's ``.venv`` interpreter if it has one:
``sources.py``; ``--source=.`` is this one, and the default), for each
``--config`` (extra daemon flags, split on spaces; flags a source's daemon
does not know are left out for it, and a cell that then repeats another runs
once), it starts a daemon on a new data dir in fsync durability, runs each
``--workload`` on it, stops it by its PID and deletes its data. Cells
alternate, in an order that flips each repeat, so a machine that changes
speed meanwhile hurts each alike. The clients are this checkout's, whatever
the source.

Workloads (``--workload``, repeatable; ``append`` by default):

* ``append``: one synchronous client (the harness's own,
  ``workloads.SyncClient``), 100 warm-up calls, then ``--rounds`` rounds of
  ``--calls`` appends of ``--events`` 1 KiB events; per round the rate (events
  over the round's wall time, so slow calls count), p50 and p99 per call, and
  the median round. Rounds are kept apart because a long write load changes
  this machine as it goes (``vm_memory.py``): the last rounds of a run show it.
* ``delivery``: bench.py's steps 1 and 7 on one daemon: ``--calls``
  back-to-back single-event appends after 100 warm-up calls (p50), then one
  subscriber ``from_end`` and one client appending single events at 500/s
  (``subscription_phases.py``: 250 warm-up, ``--delivery-events`` measured),
  send to receive; the ratios delivery p50 / back-to-back append p50 (bench's
  ``delivery_p50_vs_append_p50``) and delivery p50 / the paced appends' own p50.
  With several worker processes, the appender is placed on the subscriber's
  worker, then on another one (as ``bench.py --compare-workers`` does), and
  the other worker's delivery p50 is given over the same worker's.
* ``group``: bench.py's group-commit comparison: 8 concurrent single-event
  appenders (one client process, 8 ``grpc.aio`` tasks) for ``--window``
  seconds on this daemon, then on a second one of the same source and flags
  plus ``--max-batch-appends 1`` (one transaction and one fsync per append),
  the order flipping each repeat; the ratio (bench's ``group_commit_gain``),
  appends per LMDB commit, and each daemon's CPU.

With ``--repeat`` above 1, the medians of each cell's numbers close the run.
Every round and window is bounded by its count and by ``--round-cap``
seconds (plus the call in flight, which has a 30 s deadline).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import report
from pool import SEQUENTIAL, ClientPool, arrangement, latencies, rate
from sources import Source, SourceDaemon
from subscription_phases import FULL_SUBS, SubscriptionPhases
from workloads import Result, Spec, SyncClient

from lighthouse_proto.v1 import store_pb2 as pb

WORKLOADS = ("append", "delivery", "group")
CONCURRENT_CLIENTS = 8

Metrics = dict[str, float]


class Cell:
    """One daemon configuration of one source, and what its workloads measured."""

    def __init__(self, source: Source, flags: list[str], label: str) -> None:
        self.source = source
        self.flags = flags
        self.label = label
        self.runs: list[Metrics] = []


def one_config(
    work: Path, cell: Cell, args: argparse.Namespace, pool: ClientPool | None, index: int
) -> str:
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    daemon = SourceDaemon(cell.source, data, ["--durability", "fsync", *cell.flags])
    daemon.start()
    version = daemon.stub().GetInfo(pb.GetInfoRequest(), timeout=10).server_version
    parts: list[str] = []
    m: Metrics = {}
    try:
        for workload in args.workload:
            if workload == "append":
                text, got = append_rounds(daemon, args)
            elif workload == "delivery":
                assert pool is not None
                text, got = delivery(daemon, pool, args)
            else:
                assert pool is not None
                text, got = group(work, cell, daemon, pool, args, index)
            parts.append(text)
            m |= got
    except Exception:
        print(f"daemon log tail:\n{daemon.log_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        _stop(daemon)
    cell.runs.append(m)
    return f"(version {version}) " + "; ".join(parts)


def _stop(daemon: SourceDaemon) -> None:
    code = daemon.stop()
    if code != 0:
        print(f"the daemon exited with status {code}", file=sys.stderr)
    shutil.rmtree(daemon.data_dir, ignore_errors=True)


def _sequential(daemon: SourceDaemon, args: argparse.Namespace) -> Spec:
    """One client's ``--calls`` single-event appends after 100 warm-up calls."""
    return Spec("append", daemon.address, args.round_cap, args.calls, warmup_calls=100)


def append_rounds(daemon: SourceDaemon, args: argparse.Namespace) -> tuple[str, Metrics]:
    rates: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    spec = replace(_sequential(daemon, args), events_per_call=args.events)
    client = SyncClient(spec, 0)  # the harness's own client loop
    try:
        client.warmup()
        for _ in range(args.rounds):
            client.result = res = Result()
            client.run(time.monotonic_ns())
            if res.errors:
                raise RuntimeError(f"{res.errors} failed calls; first: {res.first_error}")
            rates.append(res.events / ((res.end_ns - res.start_ns) / 1e9))
            p50s.append(report.percentile(res.latencies_ns, 50) / 1e6)
            p99s.append(report.percentile(res.latencies_ns, 99) / 1e6)
    finally:
        client.close()
    per_round = " ".join(
        f"{r:,.0f}/{a:.2f}/{b:.2f}" for r, a, b in zip(rates, p50s, p99s, strict=True)
    )
    m = {
        "rate": statistics.median(rates),
        "p50_ms": statistics.median(p50s),
        "p99_ms": statistics.median(p99s),
    }
    return (
        f"median round {m['rate']:,.0f} ev/s, p50 {m['p50_ms']:.3f} ms, p99 {m['p99_ms']:.2f} ms"
        f"   rounds (rate/p50/p99): {per_round}"
    ), m


def delivery(
    daemon: SourceDaemon, pool: ClientPool, args: argparse.Namespace
) -> tuple[str, Metrics]:
    spec = replace(_sequential(daemon, args), stream=f"rounds-seq-{time.monotonic_ns()}")
    seq = pool.run(spec, SEQUENTIAL, server_pid=daemon.pid)
    _check("back-to-back appends", seq.results)
    errors: list[str] = []
    sizes = replace(
        FULL_SUBS, delivery_events=args.delivery_events, fanout_processes=1, cap_s=args.round_cap
    )
    phases = SubscriptionPhases(pool, daemon.address, daemon.pid, sizes, errors, _quiet)
    several = len(daemon.worker_pids()) > 1
    # With several workers: the appender on the subscriber's worker, then on another.
    d = phases.delivery(same_worker=True if several else None)
    other = phases.delivery(same_worker=False) if several else {}
    if errors:
        raise RuntimeError("; ".join(errors))
    append_p50 = report.percentile(latencies(seq), 50) / 1e6
    m = {
        "append_p50_ms": append_p50,
        "delivery_p50_ms": d["delivery_p50_ms"],
        "delivery_p99_ms": d["delivery_p99_ms"],
        "paced_append_p50_ms": d["delivery_append_p50_ms"],
        "delivery_vs_append": d["delivery_p50_ms"] / append_p50,
        "delivery_vs_paced": d["delivery_p50_ms"] / d["delivery_append_p50_ms"],
        "delivery_server_cpu": d["delivery_server_cpu"],
        "delivery_other_cpu": d["delivery_other_cpu"],
    }
    text = (
        f"append p50 {append_p50:.3f} ms, delivery p50 {m['delivery_p50_ms']:.3f} / p99"
        f" {m['delivery_p99_ms']:.3f} ms ({m['delivery_vs_append']:.2f}x append p50), paced"
        f" appends' p50 {m['paced_append_p50_ms']:.3f} ms ({m['delivery_vs_paced']:.2f}x)"
    )
    text += f"; other processes {m['delivery_other_cpu']:.2f} cores"
    if other:
        m |= {
            "other_worker_p50_ms": other["delivery_p50_ms"],
            "other_worker_p99_ms": other["delivery_p99_ms"],
            "other_worker_paced_append_p50_ms": other["delivery_append_p50_ms"],
            "other_vs_same_worker": other["delivery_p50_ms"] / d["delivery_p50_ms"],
        }
        text = (
            f"{text.replace('delivery p50', 'delivery (same worker) p50', 1)}; other worker:"
            f" delivery p50 {m['other_worker_p50_ms']:.3f} / p99 {m['other_worker_p99_ms']:.3f} ms"
            f" ({m['other_vs_same_worker']:.2f}x the same worker's), paced appends' p50"
            f" {m['other_worker_paced_append_p50_ms']:.3f} ms"
        )
    return text, m


def group(
    work: Path,
    cell: Cell,
    daemon: SourceDaemon,
    pool: ClientPool,
    args: argparse.Namespace,
    index: int,
) -> tuple[str, Metrics]:
    data = Path(tempfile.mkdtemp(prefix="data-nogroup-", dir=work))
    nogroup = SourceDaemon(
        cell.source, data, ["--durability", "fsync", *cell.flags, "--max-batch-appends", "1"]
    )
    nogroup.start()
    m: Metrics = {}
    try:
        sides = [("group", daemon), ("nogroup", nogroup)]
        for name, d in sides if index % 2 == 0 else sides[::-1]:
            spec = Spec(
                "append",
                d.address,
                duration_s=args.window,
                max_calls=int(args.window * 20_000),
                warmup_calls=20,
                stream=f"rounds-{name}-{time.monotonic_ns()}",
            )
            arr = arrangement("asyncio", CONCURRENT_CLIENTS)
            run = pool.run(spec, arr, server_pid=d.pid, probe=d.write_transactions)
            _check(f"{name} window", run.results)
            m[f"{name}_rate"] = rate(run)
            m[f"{name}_server_cpu"] = run.server_cpu
            m[f"{name}_other_cpu"] = run.other_cpu
            appends = sum(r.calls for r in run.results)
            m[f"{name}_appends_per_commit"] = appends / max(1.0, run.probe_delta)
    finally:
        _stop(nogroup)
    m["group_vs_nogroup"] = m["group_rate"] / m["nogroup_rate"]
    return (
        f"8 appenders {m['group_rate']:,.0f} ev/s ({m['group_appends_per_commit']:.1f} appends"
        f"/commit, server {m['group_server_cpu']:.2f} cores), no group commit"
        f" {m['nogroup_rate']:,.0f} ev/s (server {m['nogroup_server_cpu']:.2f} cores):"
        f" {m['group_vs_nogroup']:.2f}x; other processes"
        f" {max(m['group_other_cpu'], m['nogroup_other_cpu']):.2f} cores"
    ), m


def _check(what: str, results: list[Result]) -> None:
    errors = sum(r.errors for r in results)
    if errors:
        first = next(r.first_error for r in results if r.first_error)
        raise RuntimeError(f"{what}: {errors} failed calls; first: {first}")


def _quiet(message: str) -> None:
    """The subscription phase's progress lines: only its failures are printed."""
    if "FAILED" in message:
        print(message, file=sys.stderr)


def summary(cells: list[Cell]) -> list[str]:
    """Per cell, the median of each number over the repeats."""
    lines = ["medians over the repeats:"]
    for cell in cells:
        values = report.medians(cell.runs)
        shown = ", ".join(f"{k} {v:,.3f}" for k, v in values.items())
        lines.append(f"  [{cell.label}] {shown}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FLAGS",
        help="extra daemon flags: --config=--preallocate=0 (--config= for the defaults)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a checkout whose daemon code to run (default: this one)",
    )
    parser.add_argument(
        "--workload", action="append", choices=WORKLOADS, help="what to measure (default append)"
    )
    parser.add_argument("--events", type=int, default=100, help="append: events per append")
    parser.add_argument("--rounds", type=int, default=8, help="append: rounds")
    parser.add_argument(
        "--calls", type=int, default=1500, help="appends per round (delivery: back-to-back)"
    )
    parser.add_argument("--delivery-events", type=int, default=2500, help="delivery: measured")
    parser.add_argument("--window", type=float, default=5.0, help="group: seconds per window")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every config")
    parser.add_argument("--round-cap", type=float, default=30.0, help="seconds per round, at most")
    args = parser.parse_args(argv)
    args.workload = list(dict.fromkeys(args.workload or ["append"]))
    configs = args.config or [""]
    here = Path(__file__).resolve().parent.parent
    paths = [s.resolve() for s in args.source] or [here]
    for path in paths:
        if not (path / "lighthouse_store" / "__init__.py").is_file():
            parser.error(f"--source {path}: no lighthouse_store package there")
    if not (
        1 <= args.events <= 1000
        and 1 <= args.rounds <= 50
        and 1 <= args.calls <= 100_000
        and 1 <= args.delivery_events <= 100_000
        and 0 < args.window <= 60
        and 1 <= args.repeat <= 10
        and 0 < args.round_cap <= 120
    ):
        parser.error(
            "out of range: events 1..1000, rounds 1..50, calls 1..100000, delivery-events"
            " 1..100000, window 0..60, repeat 1..10, round-cap 0..120"
        )
    sources = [Source.at(path) for path in paths]
    cells: list[Cell] = []
    seen: set[tuple[Path, tuple[str, ...]]] = set()
    for source in sources:
        for flags in configs:
            known = source.known(flags.split())
            if (source.path, tuple(known)) in seen:
                continue  # the same daemon as a cell before it, for this source
            seen.add((source.path, tuple(known)))
            label = " ".join(known) or "defaults"
            cells.append(Cell(source, known, f"{source.path} {label}" if len(paths) > 1 else label))
    needs_pool = any(w != "append" for w in args.workload)
    pool = ClientPool(2) if needs_pool else None
    try:
        with tempfile.TemporaryDirectory(prefix="lighthouse-rounds-") as tmp:
            for i in range(args.repeat):
                # The order flips each repeat, so no cell always runs first.
                for cell in cells if i % 2 == 0 else cells[::-1]:
                    line = one_config(Path(tmp), cell, args, pool, i)
                    print(f"run {i + 1} [{cell.label}] {line}", flush=True)
    finally:
        if pool is not None:
            pool.close()
    if args.repeat > 1:
        print("\n".join(summary(cells)), flush=True)


if __name__ == "__main__":
    main()
