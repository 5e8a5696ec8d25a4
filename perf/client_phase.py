"""Step 9: the client library against the harness's stubs, on the round's daemon.

Issue 15, item 5 asks of ``StoreClient`` a full replay at >= 0.8x the stubs'
rate and a single append within 0.1 ms of the stubs' p50. Both sides run here,
on the same daemon, so that a machine whose speed moves meanwhile weighs on
both alike:

* single-event appends, 1 client: the harness's synchronous stub (requests
  built ahead, as in step 1) and ``StoreClient.append`` of a list of one
  ``NewEvent`` built before the timer (``user_clients.LighthouseSyncDriver``),
  call by call in turn in one client process (:func:`interleaved_appends`;
  ``latency_calls`` each, after ``latency_warmup``); the p50 of each side, and
  the difference. (Taking turns by halves, A B B A, let a loaded machine's
  swings fall on one side: perf/RESULTS.md.)
* the full replay of step 4 (``replay_events`` from position 1), A B B A (A is
  the stubs in even rounds, the client in odd ones): the stubs count the events
  of each page as it is parsed, ``StoreClient.read_all`` returns them as
  ``RecordedEvent`` values; the mean rate of each side's two replays, their
  ratio, and the client process's CPU per event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import report
from pool import SEQUENTIAL, Arrangement, ClientPool, Run
from sizes import SizesLike
from user_clients import OURS_SYNC, LighthouseSyncDriver
from workloads import RPC_TIMEOUT_S, Spec, SyncClient

# Runs a spec on the pool (bench.Bench.run): phase name, spec, arrangement.
RunFn = Callable[[str, Spec, Arrangement], Run]


def measure(
    pool: ClientPool,
    run: RunFn,
    sizes: SizesLike,
    address: str,
    index: int,
    errors: list[str],
) -> dict[str, float]:
    """Step 9's metrics (``client_*``) for round ``index`` on the daemon at ``address``."""
    sides = ["", OURS_SYNC] if index % 2 == 0 else [OURS_SYNC, ""]
    order = [*sides, *sides[::-1]]
    args = (address, sizes.latency_calls, sizes.latency_warmup, sizes.phase_cap_s)
    pool.start_job(0, interleaved_appends, *args)
    stubs, ours, failed = pool.expect(0, "result", sizes.phase_cap_s + RPC_TIMEOUT_S * 4)
    if failed:
        errors.append(f"client phase, single appends: {failed}")
    calls = {"": stubs, OURS_SYNC: ours}
    n = sizes.replay_events
    replay = Spec("replay", address, duration_s=sizes.phase_cap_s, max_calls=1, replay_count=n)
    rates: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    for side in order:
        done = run(f"replay ({_name(side)})", replace(replay, client=side), SEQUENTIAL)
        result = done.results[0]
        seconds = result.latencies_ns[0] / 1e9 if result.latencies_ns else 0.0
        if result.events != n or not seconds:
            errors.append(f"client phase, {_name(side)} replay: got {result.events} of {n}")
            continue
        rates[side].append(n / seconds)
        cpu[side].append(done.clients_cpu * seconds / n * 1e9)
    m: dict[str, float] = {}
    for side, prefix in (("", "client_stubs"), (OURS_SYNC, "client")):
        m[f"{prefix}_append_p50_ms"] = report.percentile(calls[side], 50) / 1e6
        if rates[side]:
            m[f"{prefix}_replay_rate"] = sum(rates[side]) / len(rates[side])
            m[f"{prefix}_replay_cpu_ns"] = sum(cpu[side]) / len(cpu[side])
    return m


def _name(side: str) -> str:
    return "StoreClient" if side else "stubs"


def interleaved_appends(
    conn: Any, address: str, calls: int, warmup: int, cap_s: float
) -> tuple[list[int], list[int], str]:
    """(A job, run in a client process.) ``warmup`` then ``calls`` single
    appends through the harness's stub and through ``StoreClient``, one of
    each in turn, which goes first flipping every pair, until ``cap_s``: the
    latencies (ns) of the stubs' calls and of ours, and the first error
    ("" if none)."""
    spec = Spec("append", address, duration_s=cap_s, max_calls=calls)
    stubs = SyncClient(replace(spec, stream="bench-client-append"), 0)
    ours = LighthouseSyncDriver(address, f"bench-client-append-{OURS_SYNC}")
    lat: tuple[list[int], list[int]] = ([], [])
    failed = ""
    try:
        grpc.channel_ready_future(stubs.channel).result(timeout=RPC_TIMEOUT_S)
        deadline = time.monotonic() + cap_s
        for i in range(warmup + calls):
            if time.monotonic() > deadline:
                break
            pair: list[tuple[int, Callable[[Any], int], Any]] = [
                (0, stubs.call, stubs.requests.next()),
                (1, ours.append, ours.batch(1)),
            ]
            for side, call, request in pair if i % 2 == 0 else pair[::-1]:
                t0 = time.monotonic_ns()
                try:
                    call(request)
                except Exception as exc:  # counted, as the harness's loops do
                    failed = failed or f"{type(exc).__name__}: {exc}"[:2000]
                    continue
                if i >= warmup:
                    lat[side].append(time.monotonic_ns() - t0)
    finally:
        stubs.close()
        ours.close()
    return lat[0], lat[1], failed
