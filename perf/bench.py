#!/usr/bin/env python3
"""Lighthouse Store perf harness: SPEC §6 numbers, each next to a floor from the same run.

    ./dev perf                      # full run (about a minute)
    .venv/bin/python perf/bench.py --quick      # smoke run, < 30 s
    .venv/bin/python perf/bench.py --repeat 3   # each measurement 3 times, medians

It starts a daemon (fresh temp data dir, fsync durability; new ones on empty
stores for every round) and an empty-RPC echo
server (perf/echo_server.py), both on 127.0.0.1, plus client worker processes,
and measures, with 1 KiB events: single-event append latency, 8 concurrent
appenders, 100-event batches, a full $all replay, GetEvent latency, and the
subscriptions (subscription_phases.py): append-to-subscriber delivery latency,
100-subscriber fan-out, resume from a named checkpoint; the client library
against the stubs (client_phase.py); and the floors: empty
gRPC round trips and raw LMDB fsync'd commits. It prints a table
with ratios and SPEC §6 pass/fail marks, and writes JSON (perf/results/).
Exit status: 0 done (targets missed or not), 1 a phase failed or an RPC
errored, 3 with --strict when a SPEC §6 target was missed.

This file is the command line and the results (the JSON document, the printed
summary); the run itself, its processes and the measurements of a round, is
``harness.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import comparison_phases
import comparisons
import machine
import peers
import report
from harness import CONCURRENT_CLIENTS, PERF_DIR, Bench, log
from pool import MODES, machine_cpu_seconds
from sizes import FULL, QUICK, Sizes

__all__ = ["FULL", "QUICK", "Bench", "Sizes", "main"]

REPO = PERF_DIR.parent
NOISY_CPU = 0.25  # cores used by other processes during a window before we warn
# Chosen by --compare-clients on the 2-core machines (perf/README.md): one
# grpc.aio client process costs the least client CPU per call, so it leaves the
# most CPU to the server, which then runs at ~1 core (the bottleneck) while the
# client process stays well under one core (not capped by its own GIL).
DEFAULT_CLIENTS = "asyncio"


def _comparisons(args: argparse.Namespace) -> list[comparisons.Comparison]:
    out = []
    if args.peer:
        out.append(comparisons.peer(args.peer, peers.PEERS[args.peer].label))
    if args.configs:
        out.append(comparisons.configs([c.label for c in args.configs]))
    return out


def _title(c: comparisons.Comparison, args: argparse.Namespace, infos: list[dict[str, Any]]) -> str:
    """What a side-by-side table compares, and how."""
    if c.kind == "cmp":
        flags = "; ".join(f"{x.label}: {' '.join(x.args) or '(defaults)'}" for x in args.configs)
        return f"daemon configurations, interleaved, fresh stores, the harness's clients ({flags})"
    peer = peers.PEERS[args.peer]
    info = infos[0] if infos else {}
    durability = info.get("durability", "?")
    if info and not all(i.get("durability_verified") for i in infos):
        durability = f"WARNING: {durability}"
    return (
        f"compared with {peer.label} {info.get('server_version', '?')}, interleaved, fresh"
        f" stores, each through its own Python client (ours: lighthouse_client."
        f"AsyncStoreClient, 1 process x N asyncio tasks; {peer.label}: {peer.client}, 1"
        f" process x N {'threads' if peer.style == 'sync' else 'asyncio tasks'});"
        f" {peer.label} durability: {durability}"
    )


def wait_quiet(limit_s: float, quiet_s: float = 5.0) -> None:
    """Wait until other processes keep less than NOISY_CPU cores busy for quiet_s seconds."""
    deadline = time.monotonic() + limit_s
    quiet_since = time.monotonic()
    log(f"waiting up to {limit_s:g} s for an idle machine")
    while time.monotonic() < deadline:
        before = machine_cpu_seconds()
        time.sleep(1.0)
        if machine_cpu_seconds() - before > NOISY_CPU:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
    log("the machine did not become idle; measuring anyway")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Lighthouse Store perf harness (SPEC §6).",
        epilog="See perf/README.md for what each number means.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, < 30 s")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="rounds; medians")
    parser.add_argument("--out", type=Path, help="JSON results file (default perf/results/...)")
    parser.add_argument(
        "--clients",
        choices=MODES,
        default=DEFAULT_CLIENTS,
        help=f"how the {CONCURRENT_CLIENTS} concurrent clients run (default {DEFAULT_CLIENTS})",
    )
    parser.add_argument(
        "--compare-clients",
        action="store_true",
        help="also measure 8-client empty-RPC and append rates under every arrangement",
    )
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra daemon flag, repeatable (e.g. --daemon-arg=--durability=async)",
    )
    parser.add_argument(
        "--peer",
        choices=sorted(peers.PEERS),
        help="also measure this event store, each system through its own Python client,"
        " interleaved with ours in every round (perf/README.md, Peers)",
    )
    parser.add_argument(
        "--compare-config",
        action="append",
        default=[],
        metavar="LABEL=FLAGS",
        help="also measure the append workloads on a daemon with these extra flags, repeatable,"
        " interleaved; ratios to the first (e.g. 'nogroup=--max-batch-appends 1' 'default=')",
    )
    parser.add_argument(
        "--compare-workers",
        metavar="N,M",
        help="--compare-config for each worker count: 'workersN=--workers N' (e.g. 1,2)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each round, wait up to this long for an idle machine (shared machines)",
    )
    parser.add_argument("--tmp-dir", type=Path, help="parent of the temp work dir")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, logs)")
    parser.add_argument("--strict", action="store_true", help="exit 3 if a target is missed")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1..20")
    try:
        args.configs = [comparison_phases.parse_config(c) for c in args.compare_config]
        if args.compare_workers:
            args.configs += comparison_phases.worker_configs(args.compare_workers)
    except ValueError as exc:
        parser.error(str(exc))
    labels = [c.label for c in args.configs]
    if args.configs and (len(labels) < 2 or len(set(labels)) != len(labels)):
        parser.error(f"compare at least 2 configurations with distinct labels, not {labels}")
    if args.peer and (why := peers.missing(args.peer)):
        parser.error(f"--peer {args.peer}: {why}")
    fs = machine.fs_type(args.tmp_dir or Path(tempfile.gettempdir()))
    if fs in ("tmpfs", "ramfs"):  # fsync would do nothing: the numbers would mislead
        parser.error(f"the work dir would be on {fs}, where fsync does nothing: "
                     "use --tmp-dir on a disk")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    out = args.out or PERF_DIR / "results" / f"{stamp}.json"
    # SIGTERM unwinds through the finally blocks below, which stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="lighthouse-perf-", dir=args.tmp_dir))
    bench = Bench(args, work, sizes)
    doc: dict[str, Any] = {
        "schema": 1,
        "started_at": started.isoformat(),
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "mode": "quick" if args.quick else "full",
        "sizes": asdict(sizes) | {"subscriptions": asdict(bench.subs)},
        "event_bytes": 1024,
        "concurrent_clients": bench.arr.describe(),
        "machine": machine.machine_info(work, REPO),
    }
    runs: list[dict[str, float]] = []
    side_by_side = _comparisons(args)
    if args.peer:
        doc["peer_servers"] = bench.peer_servers  # one per round
    if args.configs:
        doc["compared_configs"] = [asdict(c) for c in args.configs]
    failed = ""
    t0 = time.monotonic()
    try:
        bench.start()
        daemons: list[dict[str, Any]] = []
        doc["daemons"] = daemons  # one per round: each round has new daemons
        for i in range(args.repeat):
            if args.repeat > 1:
                log(f"round {i + 1} of {args.repeat}")
            if i > 0:
                bench.fresh_daemons()
            daemons.append(bench.daemon_info())
            if i == 0:
                doc["daemon"], doc["durability"] = daemons[0], daemons[0]["durability"]
            if daemons[-1]["durability"] != "DURABILITY_FSYNC":  # the targets are for fsync
                bench.errors.append(f"round {i + 1}: durability is {daemons[-1]['durability']}")
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet)
            measured: dict[str, float] = {}
            runs.append(measured)  # kept, with what it has, if the round fails
            bench.round(i, measured)
            bench.comparisons(i, measured)
        if args.compare_clients:
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet)
            doc["client_arrangements"] = bench.compare_clients()
    except Exception as exc:
        failed = f"{type(exc).__name__}: {exc}"
        log(f"FAILED: {failed}")
        if bench.daemon is not None:
            tail = bench.daemon.log_text()[-3000:]
            if tail:
                log(f"daemon log tail:\n{tail}")
    finally:
        bench.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    for run in runs:
        run |= report.ratios(run)
        for c in side_by_side:
            run |= comparisons.ratios(run, c)
    values = report.medians(runs) if runs else {}
    compared = list(doc.get("client_arrangements", {}).values())
    other = [v for run in runs + compared for k, v in run.items() if k.endswith("_other_cpu")]
    doc |= {
        "elapsed_s": round(time.monotonic() - t0, 1),
        "noise": {
            "max_other_cpu": max(other, default=0.0),
            "loadavg_at_end": list(os.getloadavg()),
        },
        "medians": values,
        "runs": runs,
        "targets": report.evaluate(values, [*report.TARGETS, *comparisons.TARGETS]),
        "errors": bench.errors + ([failed] if failed else []),
    }
    report.write_json(out, doc)

    titles = [_title(c, args, bench.peer_servers) for c in side_by_side]
    sections = [comparisons.render(values, c, t) for c, t in zip(side_by_side, titles, strict=True)]
    print(report.summary(doc, values, NOISY_CPU, sections))
    print(f"results: {out}")
    missed = [t for t in doc["targets"] if t["source"] == "target" and t["passed"] is False]
    if doc["errors"]:
        return 1
    return 3 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
