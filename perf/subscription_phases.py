"""The subscription measurements, coordinated from the harness process.

The clients run in the pool's client processes (``subscribers.py``):

1. delivery latency: process 0 subscribes ``from_end``; process 1 appends
   single events at a fixed rate; per event, receive time - send time;
2. fan-out: processes 0..P-1 open the subscriber streams ``from_end``;
   process P appends N events in batches; deliveries/s = subscribers x N /
   (last subscriber's last event - first append sent), with every stream
   checked for all N events, gapless and in order;
3. resume: process 0 acks position P as a named consumer, then times new
   streams (same warm channel) until the event at P + 1 arrives.

Each returns its metrics (the names in ``report.py``) and adds any failure to
the run's error list.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import report
import subscribers
from pool import (
    ClientPool,
    cpu_seconds,
    other_processes_cpu,
    process_tree,
    processes_cpu_seconds,
    tree_cpu_seconds,
)
from workloads import RPC_TIMEOUT_S


@dataclass(frozen=True)
class SubSizes:
    """Counts and time caps of the subscription measurements."""

    delivery_rate: float  # single-event appends per second
    delivery_warmup: int  # appends before the measured ones
    delivery_events: int  # measured appends
    fanout_subscribers: int
    fanout_processes: int  # client processes the subscribers are spread over
    fanout_events: int  # N, written in batches of fanout_batch
    fanout_batch: int
    resume_repeats: int
    cap_s: float  # time cap of each phase


FULL_SUBS = SubSizes(500.0, 250, 2500, 100, 2, 20_000, 100, 20, 120.0)
QUICK_SUBS = SubSizes(500.0, 100, 500, 100, 2, 1_000, 100, 5, 20.0)
CONSUMER = "perf-resume"
SLACK_S = RPC_TIMEOUT_S * 2  # how much longer than a phase's cap the coordinator waits


class CpuWindow:
    """CPU used by the server (with its worker processes), some client
    processes and the other processes since start()."""

    def __init__(self, server_pid: int, client_pids: Sequence[int]) -> None:
        self.servers = process_tree(server_pid)  # the server and its worker processes, if any
        self.clients = tuple(client_pids)
        self.t0 = time.monotonic()
        self.processes0 = processes_cpu_seconds()
        self.server0 = tree_cpu_seconds(self.servers)
        self.before = [cpu_seconds(p) for p in self.clients]

    def stop(self, prefix: str) -> dict[str, float]:
        """Cores busy on average: the server, the clients, the busiest client, the rest."""
        wall = max(1e-3, time.monotonic() - self.t0)
        used = [(cpu_seconds(p) - b) / wall for p, b in zip(self.clients, self.before, strict=True)]
        ours = [*self.servers, *self.clients]
        return {
            f"{prefix}_server_cpu": (tree_cpu_seconds(self.servers) - self.server0) / wall,
            f"{prefix}_clients_cpu": sum(used),
            f"{prefix}_busiest_client_cpu": max(used),
            f"{prefix}_other_cpu": other_processes_cpu(self.processes0, ours, wall),
        }


class SubscriptionPhases:
    def __init__(
        self,
        pool: ClientPool,
        address: str,
        server_pid: int,
        sizes: SubSizes,
        errors: list[str],
        log: Callable[[str], None],
    ) -> None:
        if pool.size < sizes.fanout_processes + 1:
            raise ValueError(f"the fan-out needs {sizes.fanout_processes + 1} client processes")
        self.pool = pool
        self.address = address
        self.server_pid = server_pid
        self.sizes = sizes
        self.errors = errors
        self.log = log

    def _fail(self, phase: str, what: str) -> None:
        self.errors.append(f"{phase}: {what}")
        self.log(f"{phase}: FAILED: {what}")

    # -- 1 ---------------------------------------------------------------------

    def delivery(self, same_worker: bool | None = None) -> dict[str, float]:
        """Delivery latency. ``same_worker``: with several worker processes,
        the appender connects until it reaches the subscriber's worker (True)
        or another one (False); None: wherever its connection lands."""
        s, pool = self.sizes, self.pool
        where = {None: "", True: ", on the same worker", False: ", on different workers"}
        self.log(
            f"delivery latency: 1 subscriber, {s.delivery_rate:g} single-event appends/s,"
            f" {s.delivery_events:,} measured after {s.delivery_warmup:,}{where[same_worker]}"
        )
        pool.start_job(0, subscribers.latency_subscriber, self.address, s.cap_s)
        _, worker = pool.expect(0, "ready", SLACK_S)
        placement = None
        if same_worker is not None:
            placement = subscribers.Placement(worker, same_worker)
        cpu = CpuWindow(self.server_pid, pool.pids[:2])
        pool.start_job(
            1,
            subscribers.paced_appender,
            self.address,
            s.delivery_rate,
            s.delivery_warmup,
            s.delivery_events,
            s.cap_s,
            placement,
        )
        paced: subscribers.Paced = pool.expect(1, "result", s.cap_s + SLACK_S)
        seen: subscribers.Delivery = pool.expect(0, "result", s.cap_s + SLACK_S)
        m = cpu.stop("delivery")
        if paced.errors:
            self._fail("delivery", f"{paced.errors} failed appends; first: {paced.first_error}")
        if seen.error or not seen.in_order or not seen.ended:
            self._fail("delivery", f"subscriber: {seen.error or 'positions out of order'}")
        if len(seen.latencies_ns) != paced.sent:
            self._fail("delivery", f"{len(seen.latencies_ns)} of {paced.sent} events delivered")
        elapsed = (paced.end_ns - paced.start_ns) / 1e9
        lat = seen.latencies_ns
        if placement is not None:
            m["delivery_connections"] = paced.connections
        return m | {
            "delivery_p50_ms": report.percentile(lat, 50) / 1e6,
            "delivery_p99_ms": report.percentile(lat, 99) / 1e6,
            "delivery_max_ms": max(lat, default=0) / 1e6,
            "delivery_events": len(lat),
            "delivery_append_p50_ms": report.percentile(paced.latencies_ns, 50) / 1e6,
            "delivery_append_p99_ms": report.percentile(paced.latencies_ns, 99) / 1e6,
            "delivery_append_rate": (paced.sent + s.delivery_warmup) / elapsed if elapsed else 0.0,
            "delivery_late_sends": paced.late,
        }

    # -- 2 ---------------------------------------------------------------------

    def fanout(self) -> dict[str, float]:
        s, pool, procs = self.sizes, self.pool, self.sizes.fanout_processes
        per = s.fanout_subscribers // procs
        subs, n = per * procs, s.fanout_events
        self.log(
            f"fan-out: {subs} subscribers ({procs} client processes x {per} grpc.aio streams),"
            f" {n:,} events in batches of {s.fanout_batch}"
        )
        for i in range(procs):
            pool.start_job(i, subscribers.fanout_subscribers, self.address, per, n, s.cap_s)
        starts = [p for i in range(procs) for p in pool.expect(i, "ready", SLACK_S * 2)]
        cpu = CpuWindow(self.server_pid, pool.pids[: procs + 1])
        pool.start_job(procs, subscribers.batch_writer, self.address, n, s.fanout_batch, s.cap_s)
        written: subscribers.Written = pool.expect(procs, "result", s.cap_s + SLACK_S)
        streams: list[subscribers.Follower] = [
            f for i in range(procs) for f in pool.expect(i, "result", s.cap_s + SLACK_S * 2)
        ]
        m = cpu.stop("fanout")
        if written.errors or written.events != n:
            self._fail("fan-out", f"wrote {written.events} of {n}; {written.first_error}")
        if len(set(starts)) != 1:
            self._fail("fan-out", f"subscribers started after different positions: {set(starts)}")
        bad = [
            f
            for f in streams
            if f.error or not f.in_order or f.events != n or f.last_position != f.start_after + n
        ]
        if bad:
            f = bad[0]
            self._fail(
                "fan-out",
                f"{len(bad)} of {subs} subscribers incomplete or out of order; first:"
                f" {f.events} events, last position {f.last_position} (expected"
                f" {f.start_after + n}), in order {f.in_order}, {f.error or 'no error'}",
            )
        done = [f.last_ns for f in streams if f.last_ns]
        seconds = (max(done) - written.first_ns) / 1e9 if done else 0.0
        delivered = sum(min(f.events, n) for f in streams)
        write_s = (written.end_ns - written.first_ns) / 1e9
        return m | {
            "fanout_rate": delivered / seconds if seconds > 0 else 0.0,
            "fanout_s": seconds,
            "fanout_first_done_s": (min(done) - written.first_ns) / 1e9 if done else 0.0,
            "fanout_write_rate": written.events / write_s if write_s > 0 else 0.0,
            "fanout_events_per_message": delivered / max(1, sum(f.messages for f in streams)),
            "fanout_fell_behind": sum(f.fell_behind for f in streams),
        }

    # -- 3 ---------------------------------------------------------------------

    def resume(self, head: int) -> dict[str, float]:
        s, position = self.sizes, head // 2
        self.log(
            f"resume: consumer {CONSUMER!r} acks {position:,} of {head:,};"
            f" {s.resume_repeats} resumes on one warm channel"
        )
        self.pool.start_job(
            0,
            subscribers.resume,
            self.address,
            CONSUMER,
            position,
            s.resume_repeats,
            s.cap_s,
        )
        r: subscribers.Resumed = self.pool.expect(0, "result", s.cap_s + SLACK_S * 2)
        if r.error or len(r.latencies_ns) != s.resume_repeats:
            self._fail("resume", r.error or f"{len(r.latencies_ns)} of {s.resume_repeats} done")
        lat = r.latencies_ns
        return {
            "resume_p50_ms": report.percentile(lat, 50) / 1e6,
            "resume_p99_ms": report.percentile(lat, 99) / 1e6,
            "resume_ack_stored_ms": r.ack_stored_ns / 1e6,
            "resume_first_batch_events": r.first_events,
        }
