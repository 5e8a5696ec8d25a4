"""Side-by-side measurements in each round, coordinated from the harness process.

* :meth:`ComparisonPhases.peer`: a fresh daemon of ours and a fresh server of a
  peer (``peers.py``), each called through its own Python client
  (``user_clients.py``): single-append latency, 8 concurrent appenders,
  100-event batches from 1 and 2 clients, a full replay;
* :meth:`ComparisonPhases.configs`: fresh daemons of ours, one per
  configuration (extra daemon flags, e.g. ``--workers 2``), called through the
  harness's own clients: the same measurements but the replay, and
  append-to-subscriber delivery (``subscription_phases.py``'s, with fewer
  events): the appender's connection on the subscriber's worker process and,
  with several workers, on another one (issue 15: delivery p50 <= 2 ms when
  they differ). A connection lands on a worker the kernel picks, so the
  appender connects until it reaches the one it needs
  (``subscribers.connect_to_worker``).

Every system gets the same workloads in the same order, on an empty store;
each workload runs on every system back to back before the next one starts,
and the order of the systems turns by one each round (so with two, it
alternates), so that neither always meets the machine's moments the other
leaves. Servers are started at the start of a phase and stopped by PID at its
end, also when it fails. Metric names: ``comparisons.py``.
"""

from __future__ import annotations

import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import comparisons
import peers
import report
import user_clients
from pool import SEQUENTIAL, Arrangement, ClientPool, Run, arrangement, latencies, rate
from sizes import SizesLike
from stopping import daemon_step, stop_each
from subscription_phases import SubscriptionPhases, SubSizes
from workloads import Spec

CONCURRENT_CLIENTS = 8
WORKLOADS = ("seq", "conc", "batch1", "batch2", "replay")
CONFIG_WORKLOADS = ("seq", "conc", "batch1", "batch2", "delivery")
# Delivery per placement, at most (fewer if the run's subscription sizes say so):
# 2.2 s at 500 appends/s, so that three placements fit in a round.
DELIVERY_WARMUP = 100
DELIVERY_EVENTS = 1000


@dataclass(frozen=True)
class Config:
    """A daemon configuration: a label and the flags it adds."""

    label: str
    args: tuple[str, ...]


def parse_config(text: str) -> Config:
    """``LABEL=FLAGS`` (``"nogroup=--max-batch-appends 1"``; ``"default="``)."""
    label, sep, flags = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected LABEL=FLAGS, e.g. 'workers2=--workers 2'")
    return Config(comparisons.config_label(label), tuple(shlex.split(flags)))


def worker_configs(text: str) -> list[Config]:
    """``--compare-workers 1,2``: one configuration per worker count."""
    counts = [c.strip() for c in text.split(",") if c.strip()]
    if not counts or not all(c.isdigit() and int(c) > 0 for c in counts):
        raise ValueError(f"{text!r}: expected worker counts, e.g. 1,2")
    return [Config(f"workers{c}", ("--workers", c)) for c in counts]


@dataclass(frozen=True)
class _System:
    name: str  # in the metric names
    address: str
    pid: int
    client: str  # Spec.client: "" for the harness's own clients
    workers: int = 1  # our daemon's worker processes


# Runs a spec against a server: (phase name, spec, arrangement, server pid) -> Run,
# counting failed calls as the run's errors (bench.Bench.run).
RunFn = Callable[[str, Spec, Arrangement, int], Run]


class ComparisonPhases:
    def __init__(
        self,
        run: RunFn,
        sizes: SizesLike,
        arr: Arrangement,
        work: Path,
        daemon_args: list[str],
        keep: bool,
        errors: list[str],
        log: Callable[[str], None],
        pool: ClientPool,
        subs: SubSizes,
    ) -> None:
        self._run = run
        self.pool = pool  # for the delivery jobs (2 client processes)
        self.subs = subs
        self.sizes = sizes
        self.arr = arr  # the harness's arrangement of 8 clients (configs)
        self.work = work
        self.daemon_args = daemon_args
        self.keep = keep
        self.errors = errors
        self.log = log

    # -- the phases ---------------------------------------------------------------

    def peer(self, name: str, index: int) -> tuple[dict[str, float], dict[str, Any]]:
        """Ours and peer ``name``, each through its own client, on fresh
        stores: the metrics, and the peer server's info."""
        from lighthouse_store.testing import DaemonProcess

        round_dir = self.work / f"peer-{index}"
        round_dir.mkdir()
        ours = DaemonProcess(
            round_dir / "lighthouse-data",
            extra_args=["--durability", "fsync", *self.daemon_args],
            log_path=round_dir / "lighthouse.log",
        )
        theirs = peers.server(name, round_dir)
        try:
            ours.start()
            theirs.start()
            info = theirs.info()
            self.log(
                f"peer {name} {info['server_version']} pid {theirs.pid} at {theirs.address};"
                f" our daemon for it pid {ours.pid}"
            )
            systems = [
                _System(comparisons.OURS, ours.address, ours.pid, user_clients.OURS),
                _System(name, theirs.address, theirs.pid, name),
            ]
            return self._measure("peer", systems, index, WORKLOADS), info
        finally:
            stop_each([daemon_step("our daemon", ours), (f"{name} server", theirs.stop, None)],
                      self.log)  # fmt: skip
            if not self.keep:
                shutil.rmtree(round_dir, ignore_errors=True)

    def configs(self, configs: list[Config], index: int) -> dict[str, float]:
        """Our daemon under each configuration, through the harness's clients."""
        from lighthouse_store.testing import DaemonProcess

        daemons = {
            c.label: DaemonProcess(
                self.work / f"cmp-{c.label}-{index}",
                extra_args=["--durability", "fsync", *self.daemon_args, *c.args],
                log_path=self.work / f"cmp-{c.label}-{index}.log",
            )
            for c in configs
        }
        try:
            for label, d in daemons.items():
                d.start()
                self.log(f"configuration {label}: daemon pid {d.pid} ({' '.join(d.extra_args)})")
            systems = [
                _System(label, d.address, d.pid, "", max(1, len(d.worker_pids())))
                for label, d in daemons.items()
            ]
            return self._measure("cmp", systems, index, CONFIG_WORKLOADS)
        finally:
            for label, d in daemons.items():
                stop_each([daemon_step(f"{label} daemon", d)], self.log)
                if not self.keep:
                    shutil.rmtree(d.data_dir, ignore_errors=True)

    # -- measuring --------------------------------------------------------------------

    def _measure(
        self, kind: str, systems: list[_System], index: int, workloads: tuple[str, ...]
    ) -> dict[str, float]:
        turn = index % len(systems)
        order = systems[turn:] + systems[:turn]
        self.log(f"{kind}: {', '.join(s.name for s in order)}, workload by workload")
        m: dict[str, float] = {}
        for workload in workloads:
            for system in order:
                m |= self._one(kind, system, workload)
        return m

    def _one(self, kind: str, system: _System, workload: str) -> dict[str, float]:
        s, name = self.sizes, system.name
        prefix = f"{kind}_{name}_"
        stream = f"{kind}-{workload}-{time.monotonic_ns()}"
        base = Spec("append", system.address, s.window_s, 0, stream=stream, client=system.client)
        if workload == "delivery":
            return self._delivery(prefix, system)
        if workload == "seq":
            spec = replace(
                base, duration_s=s.phase_cap_s, max_calls=s.latency_calls,
                warmup_calls=s.latency_warmup,
            )  # fmt: skip
            run = self._go(f"{kind} {name}: single appends", spec, self._arr(system, 1), system)
            lat = latencies(run)
            return {
                prefix + "seq_p50_ms": report.percentile(lat, 50) / 1e6,
                prefix + "seq_p99_ms": report.percentile(lat, 99) / 1e6,
            }
        if workload == "replay":
            count = s.replay_events
            # The top-up appends before the read are its warmup: the pool
            # allows each warmup call a second before the client is ready.
            spec = replace(
                base, op="replay", duration_s=s.phase_cap_s, max_calls=1, replay_count=count,
                warmup_calls=-(-count // 100),
            )  # fmt: skip
            arr = self._arr(system, 1)
            result = self._go(f"{kind} {name}: replay", spec, arr, system).results[0]
            seconds = result.latencies_ns[0] / 1e9 if result.latencies_ns else 0.0
            if result.events != count:
                self.errors.append(f"{kind} {name} replay: got {result.events}, expected {count}")
            return {prefix + "replay_rate": result.events / seconds if seconds else 0.0}
        batch = 1 if workload == "conc" else 100
        clients = {"conc": CONCURRENT_CLIENTS, "batch1": 1, "batch2": 2}[workload]
        spec = replace(
            base, max_calls=int(s.window_s * (20_000 if batch == 1 else 2_000)),
            warmup_calls=20 if batch == 1 else 5, events_per_call=batch,
        )  # fmt: skip
        arr = self._arr(system, clients)
        run = self._go(f"{kind} {name}: {workload} ({arr.describe()})", spec, arr, system)
        return {
            prefix + f"{workload}_rate": rate(run),
            prefix + f"{workload}_server_cpu": run.server_cpu,
            prefix + f"{workload}_clients_cpu": run.clients_cpu,
            prefix + f"{workload}_other_cpu": run.other_cpu,
        }

    def _delivery(self, prefix: str, system: _System) -> dict[str, float]:
        """Delivery p50/p99 with the appender on the subscriber's worker
        (``delivery_same_*``) and, with several workers, on another one
        (``delivery_other_*``); a placement that failed gives no numbers."""
        sizes = replace(
            self.subs,
            delivery_warmup=min(self.subs.delivery_warmup, DELIVERY_WARMUP),
            delivery_events=min(self.subs.delivery_events, DELIVERY_EVENTS),
            fanout_processes=1,  # (no fan-out here: the pool needs 2 processes)
        )
        phases = SubscriptionPhases(
            self.pool, system.address, system.pid, sizes, self.errors, self.log
        )
        m: dict[str, float] = {}
        for name, same in [("same", True), ("other", False)][: min(2, system.workers)]:
            failed = len(self.errors)
            d = phases.delivery(same_worker=same)
            if len(self.errors) == failed:
                for metric in ("p50_ms", "p99_ms", "connections"):
                    m[f"{prefix}delivery_{name}_{metric}"] = d[f"delivery_{metric}"]
        return m

    def _arr(self, system: _System, clients: int) -> Arrangement:
        """How ``clients`` clients of ``system`` run: the harness's own as its
        --clients says; a system's own client library as one client process
        with a task (asyncio) or a thread (synchronous) per client."""
        if not system.client:
            if clients == 1:
                return SEQUENTIAL
            return arrangement(self.arr.mode, clients)
        mode = "asyncio" if user_clients.style(system.client) == "asyncio" else "threads"
        return arrangement(mode, clients)

    def _go(self, phase: str, spec: Spec, arr: Arrangement, system: _System) -> Run:
        return self._run(phase, spec, arr, system.pid)

