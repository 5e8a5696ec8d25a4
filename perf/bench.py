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
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import client_phase
import comparison_phases
import comparisons
import echo_server
import floors
import machine
import peers
import report
from comparison_phases import ComparisonPhases
from pool import (
    MODES,
    SEQUENTIAL,
    Arrangement,
    ClientPool,
    Run,
    arrangement,
    latencies,
    machine_cpu_seconds,
    rate,
)
from subscription_phases import FULL_SUBS, QUICK_SUBS, SubscriptionPhases
from workloads import Spec

from lighthouse_proto.v1 import store_pb2 as pb

PERF_DIR = Path(__file__).resolve().parent
REPO = PERF_DIR.parent
CONCURRENT_CLIENTS = 8
NOISY_CPU = 0.25  # cores used by other processes during a window before we warn
# Chosen by --compare-clients on the 2-core machines (perf/README.md): one
# grpc.aio client process costs the least client CPU per call, so it leaves the
# most CPU to the server, which then runs at ~1 core (the bottleneck) while the
# client process stays well under one core (not capped by its own GIL).
DEFAULT_CLIENTS = "asyncio"


@dataclass(frozen=True)
class Sizes:
    """Counts and time caps of one run (every loop stops at whichever comes first)."""

    latency_calls: int
    latency_warmup: int
    window_s: float  # each throughput window
    replay_events: int
    get_calls: int
    lmdb1_commits: int
    lmdb100_commits: int
    phase_cap_s: float  # time cap of a count-bounded phase


FULL = Sizes(3000, 300, 5.0, 100_000, 3000, 2000, 300, 60.0)
QUICK = Sizes(300, 50, 1.0, 10_000, 300, 200, 30, 10.0)


def log(msg: str) -> None:
    print(f"[perf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    """One run: a pool of client processes, an echo server and a daemon."""

    def __init__(self, args: argparse.Namespace, work: Path, sizes: Sizes) -> None:
        self.args = args
        self.work = work
        self.sizes = sizes
        self.subs = QUICK_SUBS if args.quick else FULL_SUBS
        self.arr = arrangement(args.clients, CONCURRENT_CLIENTS)
        self.errors: list[str] = []
        self.pool: ClientPool | None = None
        self.echo: echo_server.EchoServer | None = None
        self.daemon: Any = None
        self.nogroup: Any = None
        self._generation = 0  # daemons started so far (pairs), names their data dirs
        self.peer_servers: list[dict[str, Any]] = []  # --peer: its server's info, per round

    # -- setup -------------------------------------------------------------

    def start(self) -> None:
        needed = CONCURRENT_CLIENTS if self.args.compare_clients else self.arr.processes
        needed = max(needed, self.subs.fanout_processes + 1)  # fan-out: subscribers + writer
        log(f"starting {needed} client process(es), the echo server and the daemon")
        self.pool = ClientPool(needed)
        self.echo = echo_server.EchoServer(PERF_DIR / "echo_server.py", self.work / "echo.log")
        self.echo.start()
        self.start_daemons()
        log(
            f"echo server pid {self.echo.pid} at {self.echo.address}; "
            f"client pids {self.pool.pids}"
        )

    def start_daemons(self) -> None:
        """The daemon, and the same daemon with group commit off, on new data dirs."""
        from lighthouse_store.testing import DaemonProcess

        self._generation += 1
        g = self._generation
        extra = ["--durability", "fsync", *self.args.daemon_arg]
        self.daemon = DaemonProcess(
            self.work / f"data-{g}", extra_args=extra, log_path=self.work / f"daemon-{g}.log"
        )
        self.daemon.start()
        # One transaction and one fsync per append, to show what grouping gains
        # under the same 8 clients.
        self.nogroup = DaemonProcess(
            self.work / f"data-nogroup-{g}",
            extra_args=[*extra, "--max-batch-appends", "1"],
            log_path=self.work / f"daemon-nogroup-{g}.log",
        )
        self.nogroup.start()
        log(
            f"daemon pid {self.daemon.pid} at {self.daemon.address}; "
            f"no-group-commit daemon pid {self.nogroup.pid}"
        )

    def stop_daemons(self) -> None:
        """Stop both daemons, each by its PID, and delete their data (unless
        ``--keep``); never raises."""
        _stop_each(
            [
                _daemon_step("daemon", self.daemon),
                _daemon_step("no-group daemon", self.nogroup),
            ]
        )
        for d in (self.daemon, self.nogroup):
            if d is not None and not self.args.keep:
                shutil.rmtree(d.data_dir, ignore_errors=True)

    def fresh_daemons(self) -> None:
        """Replace both daemons with new ones on empty stores: every round starts
        from the same state, not from the store the rounds before it grew."""
        self.stop_daemons()
        self.start_daemons()

    def stop(self) -> None:
        """Stop everything this run started, each by its PID; never raises."""
        self.stop_daemons()
        _stop_each(
            [
                ("client pool", self.pool.close if self.pool else None, None),
                ("echo server", self.echo.stop if self.echo else None, None),
            ]
        )

    def commits(self) -> float:
        """LMDB write transactions committed so far in the daemon's env; NaN if
        they cannot be read."""
        try:
            return float(self.daemon.write_transactions())
        except Exception:
            return math.nan

    def daemon_info(self) -> dict[str, Any]:
        info = self.daemon.stub().GetInfo(pb.GetInfoRequest(), timeout=10)
        return {
            "server_version": info.server_version,
            "durability": pb.Durability.Name(info.durability),
            "head_position": info.head_position,
            "address": self.daemon.address,
            "pid": self.daemon.pid,
        }

    # -- running specs --------------------------------------------------------

    def run(
        self, phase: str, spec: Spec, arr: Arrangement = SEQUENTIAL, server_pid: int = 0
    ) -> Run:
        """Run ``spec`` on the pool; its server is the echo server or a daemon
        of this run, found by address, or the process ``server_pid``."""
        assert self.pool is not None and self.echo is not None
        servers = [self.echo, self.daemon, self.nogroup]
        server = server_pid or next(
            p.pid for p in servers if p is not None and p.address == spec.address
        )
        # The commit count is read from the main daemon's env only.
        to_daemon = spec.address == self.daemon.address
        probe = self.commits if spec.op == "append" and to_daemon else None
        run = self.pool.run(spec, arr, server_pid=server, probe=probe)
        errors = sum(r.errors for r in run.results)
        if errors:
            first = next(r.first_error for r in run.results if r.first_error)
            self.errors.append(f"{phase}: {errors} failed calls; first: {first}")
            log(f"{phase}: {errors} FAILED calls; first: {first}")
        return run

    def latency(self, op: str, address: str, keep_ids: bool = False) -> Run:
        s = self.sizes
        spec = Spec(
            op,  # type: ignore[arg-type]
            address,
            duration_s=s.phase_cap_s,
            max_calls=s.latency_calls,
            warmup_calls=s.latency_warmup,
            stream=f"bench-latency-{time.monotonic_ns()}",
            keep_ids=keep_ids,
        )
        return self.run(f"{op} latency", spec)

    def window(
        self,
        op: str,
        address: str,
        arr: Arrangement,
        *,
        batch: int = 1,
        stream: str = "bench",
        random_ids: bool = False,
    ) -> Run:
        s = self.sizes
        per_call_cap = 20_000 if batch == 1 else 2_000  # calls per second per client
        spec = Spec(
            op,  # type: ignore[arg-type]
            address,
            duration_s=s.window_s,
            max_calls=int(s.window_s * per_call_cap),
            warmup_calls=20 if batch == 1 else 5,
            events_per_call=batch,
            stream=f"{stream}-{time.monotonic_ns()}",
            random_ids=random_ids,
        )
        ids = ", random ids" if random_ids else ""
        return self.run(f"{op} x{batch} window ({arr.describe()}{ids})", spec, arr)

    # -- one round of every measurement ------------------------------------------

    def id_order_windows(self, index: int) -> dict[str, float]:
        """One client's 100-event batches with ordered ids, then with random
        (UUIDv4-like) ids, or the other way round in odd rounds, back to back on
        the second daemon (whose store then holds only its 8-appender window):
        the same daemon and store for both, and the order alternates so that
        neither always meets the store the other grew. With one sequential
        client there is one append per commit either way, so that daemon's
        --max-batch-appends 1 changes nothing here."""
        log("batched appends, 100 events per call, ordered and random ids: 1 client each")
        m: dict[str, float] = {}
        kinds = [("batch1_v7", False), ("batch1_v4", True)]
        for prefix, random_ids in kinds if index % 2 == 0 else kinds[::-1]:
            run = self.window(
                "append", self.nogroup.address, SEQUENTIAL, batch=100,
                stream=f"bench-{prefix}", random_ids=random_ids,
            )  # fmt: skip
            m |= _conc(prefix, run, latency=False)
        return m

    def round(self, index: int, m: dict[str, float]) -> None:
        """Measure one round into ``m``, phase by phase (so what was measured
        stays there if a later phase fails)."""
        assert self.echo is not None
        s, echo, daemon = self.sizes, self.echo.address, self.daemon.address

        m["cpu_loop_ms"] = machine.python_loop_ms()
        log("LMDB floors (in-process, sync=True)")
        lmdb1 = floors.lmdb_commits(
            self.work, puts_per_commit=1, max_commits=s.lmdb1_commits, time_cap_s=s.phase_cap_s
        )
        lmdb100 = floors.lmdb_commits(
            self.work, puts_per_commit=100, max_commits=s.lmdb100_commits, time_cap_s=s.phase_cap_s
        )
        m |= {f"lmdb1_{k}": v for k, v in lmdb1.items()}
        m |= {f"lmdb100_{k}": v for k, v in lmdb100.items()}

        log(f"sequential latency: empty RPC, then append ({s.latency_calls:,} calls each)")
        m |= report.latency_ms("echo_seq", latencies(self.latency("echo", echo)))
        appended = self.latency("append", daemon, keep_ids=True)
        m |= report.latency_ms("append_seq", latencies(appended))
        ids = [i for r in appended.results for i in r.event_ids]

        label = self.arr.describe()
        log(f"{CONCURRENT_CLIENTS} concurrent clients ({label}), {s.window_s:g} s windows")
        m |= _conc("echo_conc", self.window("echo", echo, self.arr), calls=True)
        m |= _conc("append_conc", self.window("append", daemon, self.arr, stream="bench-conc"))
        nogroup = self.window("append", self.nogroup.address, self.arr, stream="bench-nogroup")
        m["nogroup_conc_rate"] = rate(nogroup)

        log("batched appends, 100 events per call: 1 client, then 2")
        batch1 = self.window("append", daemon, SEQUENTIAL, batch=100, stream="bench-batch")
        m |= _conc("batch1", batch1, prefix_latency="batch1_call")
        two = arrangement(self.arr.mode, 2)
        batch2 = self.window("append", daemon, two, batch=100, stream="bench-batch")
        m |= _conc("batch2", batch2, latency=False)
        m |= self.id_order_windows(index)

        self.fill(s.replay_events)
        log(f"full replay of {s.replay_events:,} events ($all)")
        replay_spec = Spec(
            "replay",
            daemon,
            duration_s=s.phase_cap_s,
            max_calls=1,
            replay_count=s.replay_events,
        )
        replay = self.run("replay", replay_spec).results[0]
        seconds = replay.latencies_ns[0] / 1e9 if replay.latencies_ns else 0.0
        m |= {"replay_events": replay.events, "replay_s": seconds}
        m["replay_rate"] = replay.events / seconds if seconds else 0.0
        if replay.events != s.replay_events:
            self.errors.append(f"replay: got {replay.events} events, expected {s.replay_events}")

        log(f"GetEvent of random written ids ({s.get_calls:,} calls)")
        get_spec = Spec(
            "get_event",
            daemon,
            duration_s=s.phase_cap_s,
            max_calls=s.get_calls,
            warmup_calls=s.latency_warmup,
            event_ids=tuple(ids),
        )
        lat = report.latency_ms("get", latencies(self.run("get_event", get_spec)))
        m |= {k: v for k, v in lat.items() if k in ("get_p50_ms", "get_p99_ms")}

        log("the client library: StoreClient against the stubs, single appends and a replay")
        assert self.pool is not None
        m |= client_phase.measure(self.pool, self.run, s, daemon, index, self.errors)

        assert self.pool is not None
        subs = SubscriptionPhases(self.pool, daemon, self.daemon.pid, self.subs, self.errors, log)
        m |= subs.resume(int(self.daemon_info()["head_position"]))
        m |= subs.delivery()
        m |= subs.fanout()

    def comparisons(self, index: int, m: dict[str, float]) -> None:
        """The side-by-side phases of round ``index`` (--peer, --compare-*),
        into ``m``; the peer server's info into ``peer_servers``."""
        assert self.pool is not None
        phases = ComparisonPhases(
            self.run, self.sizes, self.arr, self.work, self.args.daemon_arg, self.args.keep,
            self.errors, log, self.pool, self.subs,
        )  # fmt: skip
        if self.args.peer:
            metrics, info = phases.peer(self.args.peer, index)
            m |= metrics
            self.peer_servers.append(info)
        if self.args.configs:
            m |= phases.configs(self.args.configs, index)

    def fill(self, events: int) -> None:
        head = int(self.daemon_info()["head_position"])
        if head >= events:
            return
        calls = -(-(events - head) // 100)
        log(f"filling the store to {events:,} events ({calls:,} batches)")
        spec = Spec(
            "append",
            self.daemon.address,
            duration_s=self.sizes.phase_cap_s * 2,
            max_calls=calls,
            events_per_call=100,
            stream="bench-fill",
        )
        self.run("fill", spec)

    def compare_clients(self) -> dict[str, dict[str, float]]:
        """Empty-RPC and append rates of 8 clients under every arrangement."""
        assert self.echo is not None
        out: dict[str, dict[str, float]] = {}
        for mode in MODES:
            arr = arrangement(mode, CONCURRENT_CLIENTS)
            log(f"client arrangement {mode}: {arr.describe()}")
            echo = _conc("echo", self.window("echo", self.echo.address, arr), calls=True)
            append = _conc(
                "append", self.window("append", self.daemon.address, arr, stream="bench-cmp")
            )
            out[mode] = echo | append
            out[mode]["ratio"] = append["append_rate"] / echo["echo_rate"]
        return out


_StopStep = tuple[str, Callable[[], object] | None, Callable[[], object] | None]


def _stop_each(steps: list[_StopStep]) -> None:
    """Run each (name, stop, fallback) step; a failing stop is logged and its
    fallback run, and the steps after it still run."""
    for name, stop, fallback in steps:
        if stop is None:
            continue
        try:
            stop()
        except Exception as exc:  # keep stopping the others
            log(f"stopping the {name} failed: {exc!r}")
            if fallback is not None:
                fallback()


def _daemon_step(name: str, daemon: Any) -> _StopStep:
    """Stop a daemon by SIGTERM; if that fails and it still runs, kill -9 it."""
    if daemon is None:
        return (name, None, None)
    return (name, daemon.stop, lambda: daemon.kill9() if daemon.running() else None)


def _conc(
    prefix: str,
    run: Run,
    calls: bool = False,
    prefix_latency: str = "",
    latency: bool = True,
) -> dict[str, float]:
    """A window's rate, CPU use and appends per commit, and (unless ``latency``
    is off) its call p50/p99 under ``prefix_latency`` or ``prefix``."""
    appends = sum(r.calls for r in run.results)
    delta = run.probe_delta
    per_commit = {f"{prefix}_appends_per_commit": appends / delta} if delta > 0 else {}
    out = per_commit | {
        f"{prefix}_rate": rate(run, calls),
        f"{prefix}_server_cpu": run.server_cpu,
        f"{prefix}_clients_cpu": run.clients_cpu,
        f"{prefix}_other_cpu": run.other_cpu,
    }
    if latency:
        lat, p = latencies(run), prefix_latency or prefix
        out[f"{p}_p50_ms"] = report.percentile(lat, 50) / 1e6
        out[f"{p}_p99_ms"] = report.percentile(lat, 99) / 1e6
    return out


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
