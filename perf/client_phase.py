"""Step 9: the client library against the harness's stubs, on the round's daemon.

Issue 15, item 5 asks of ``StoreClient`` a full replay at >= 0.8x the stubs'
rate and a single append within 0.1 ms of the stubs' p50. Both sides run here,
back to back on the same daemon, in the order A B B A (A is the stubs in even
rounds, the client in odd ones), each half with half the count, so that a
machine whose speed moves meanwhile weighs on both alike:

* single-event appends, 1 client, sequential: the harness's synchronous stub
  (requests built ahead, as in step 1) and ``StoreClient.append`` of a list of
  one ``NewEvent`` built before the timer (``user_clients.LighthouseSyncDriver``);
  the p50 of each side's calls from both halves, and the difference;
* the full replay of step 4 (``replay_events`` from position 1): the stubs
  count the events of each page as it is parsed, ``StoreClient.read_all``
  returns them as ``RecordedEvent`` values; the mean rate of each side's two
  replays, their ratio, and the client process's CPU per event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import report
from pool import SEQUENTIAL, Arrangement, Run, latencies
from user_clients import OURS_SYNC
from workloads import Spec

# Runs a spec on the pool (bench.Bench.run): phase name, spec, arrangement.
RunFn = Callable[[str, Spec, Arrangement], Run]


class SizesLike(Protocol):
    """What this module takes from ``bench.Sizes``."""

    @property
    def latency_calls(self) -> int: ...
    @property
    def latency_warmup(self) -> int: ...
    @property
    def replay_events(self) -> int: ...
    @property
    def phase_cap_s(self) -> float: ...


def measure(
    run: RunFn, sizes: SizesLike, address: str, index: int, errors: list[str]
) -> dict[str, float]:
    """Step 9's metrics (``client_*``) for round ``index`` on the daemon at ``address``."""
    sides = ["", OURS_SYNC] if index % 2 == 0 else [OURS_SYNC, ""]
    order = [*sides, *sides[::-1]]
    half = max(1, sizes.latency_calls // 2)
    append = Spec(
        "append", address, duration_s=sizes.phase_cap_s / 2, max_calls=half,
        warmup_calls=sizes.latency_warmup // 2, stream="bench-client-append",
    )  # fmt: skip
    calls: dict[str, list[int]] = {side: [] for side in sides}
    for side in order:
        spec = replace(append, client=side, stream=f"{append.stream}-{side or 'stubs'}")
        calls[side] += latencies(run(f"single appends ({_name(side)})", spec, SEQUENTIAL))
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
