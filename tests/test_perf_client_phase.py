"""Step 9 of the perf harness (``perf/client_phase.py``): StoreClient and the
harness's stubs on one real daemon, A B B A; tiny counts, no speed asserted."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import client_phase
from pool import ClientPool, Run
from workloads import Spec

from lighthouse_client import NewEvent, StoreClient
from lighthouse_store.testing import DaemonProcess


@dataclass(frozen=True)
class Tiny:
    latency_calls: int = 10
    latency_warmup: int = 2
    replay_events: int = 30
    phase_cap_s: float = 20.0


def test_both_sides_run_on_the_daemon_in_turn(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as c:
        for _ in range(3):
            c.append("fill", [NewEvent("Fill", b"x") for _ in range(10)])
    pool = ClientPool(1)
    ran: list[tuple[str, str]] = []

    def run(phase: str, spec: Spec, arr: object) -> Run:
        ran.append((spec.op, spec.client or "stubs"))
        return pool.run(spec, arr)  # type: ignore[arg-type]

    errors: list[str] = []
    try:
        even = client_phase.measure(run, Tiny(), daemon.address, 0, errors)
        odd = client_phase.measure(run, Tiny(), daemon.address, 1, errors)
    finally:
        pool.close()
    assert errors == []
    ours = "lighthouse-sync"
    a_b_b_a = [("stubs", ours, ours, "stubs"), (ours, "stubs", "stubs", ours)]
    for index, order in enumerate(a_b_b_a):
        calls = ran[8 * index : 8 * index + 8]
        assert calls == [("append", side) for side in order] + [("replay", s) for s in order]
    for m in (even, odd):
        for key in ("client_append_p50_ms", "client_stubs_append_p50_ms", "client_replay_rate",
                    "client_stubs_replay_rate"):
            assert m[key] > 0, key
        assert m["client_replay_cpu_ns"] >= 0  # (in clock ticks: 0 for so few events)
    # Each side's appends went to its own stream: 2 rounds x 2 halves x
    # (1 warm-up call + 5 calls).
    with StoreClient(daemon.address) as c:
        for side in ("stubs", ours):
            assert len(c.read_stream(f"bench-client-append-{side}-0")) == 2 * 2 * (1 + 5)
