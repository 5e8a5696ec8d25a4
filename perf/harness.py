"""One run of the perf harness (``bench.py``): its processes, and the measurements of a round.

:class:`Bench` starts a pool of client processes (``pool.py``), the
empty-RPC echo server and two daemons (the second with group commit off),
replaces the daemons with new ones on empty stores for every round after the
first, and stops each of them by its PID. :meth:`Bench.round` measures steps
1-9 (``perf/README.md``) into a dict of metrics, phase by phase, so that what
a round measured stays there if a later phase fails; :meth:`Bench.comparisons`
runs the side-by-side phases of the round (``comparison_phases.py``).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import client_phase
import echo_server
import floors
import machine
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
    rate,
)
from sizes import Sizes
from stopping import daemon_step, stop_each
from subscription_phases import FULL_SUBS, QUICK_SUBS, SubscriptionPhases
from workloads import Spec

from lighthouse_proto.v1 import store_pb2 as pb

PERF_DIR = Path(__file__).resolve().parent
CONCURRENT_CLIENTS = 8


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
        stop_each(
            [daemon_step("daemon", self.daemon), daemon_step("no-group daemon", self.nogroup)],
            log,
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
        stop_each(
            [
                ("client pool", self.pool.close if self.pool else None, None),
                ("echo server", self.echo.stop if self.echo else None, None),
            ],
            log,
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
