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
    window_s: float = 0.2
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
        even = client_phase.measure(pool, run, Tiny(), daemon.address, 0, errors)
        odd = client_phase.measure(pool, run, Tiny(), daemon.address, 1, errors)
    finally:
        pool.close()
    assert errors == []
    ours = "lighthouse-sync"
    a_b_b_a = [("stubs", ours, ours, "stubs"), (ours, "stubs", "stubs", ours)]
    assert ran == [("replay", side) for order in a_b_b_a for side in order]
    for m in (even, odd):
        for key in (
            "client_append_p50_ms",
            "client_stubs_append_p50_ms",
            "client_replay_rate",
            "client_stubs_replay_rate",
        ):
            assert m[key] > 0, key
        assert m["client_replay_cpu_ns"] >= 0  # (in clock ticks: 0 for so few events)
    # Each side's appends went to its own stream: 2 rounds x (2 warm-up calls + 10).
    with StoreClient(daemon.address) as c:
        for stream in ("bench-client-append-0", f"bench-client-append-{ours}"):
            assert len(c.read_stream(stream)) == 2 * (2 + 10)


def test_appends_take_turns_call_by_call(daemon: DaemonProcess) -> None:
    stubs, ours, failed = client_phase.interleaved_appends(None, daemon.address, 6, 1, 20.0)
    assert failed == "" and len(stubs) == len(ours) == 6
    with StoreClient(daemon.address) as c:
        a = c.read_stream("bench-client-append-0")
        b = c.read_stream("bench-client-append-lighthouse-sync")
    # Which side went first flips every pair: 1st stubs, 2nd ours, 3rd stubs, ...
    firsts = ["stubs" if x.position < y.position else "ours" for x, y in zip(a, b, strict=True)]
    assert firsts == ["stubs", "ours"] * 3 + ["stubs"]
