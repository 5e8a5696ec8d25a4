"""The degradation controller's pure parts: hysteresis, the sliding window,
the order of events and levels (fake figures and a fake recorder; the clock
is passed in, never read)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from lighthouse_store.config import DegradationSettings
from lighthouse_store.corruption import Finding
from lighthouse_store.degradation import (
    DEGRADED,
    NORMAL,
    WARNING,
    Controller,
    Hysteresis,
    Sample,
    Window,
    WriteGate,
    allowlisted,
    marks,
    system_event,
)
from lighthouse_store.errors import InvalidArgument

SETTINGS = DegradationSettings()


def hysteresis(clear_seconds: float = 10.0) -> Hysteresis:
    return Hysteresis(marks(SETTINGS), SETTINGS.clear_ratio, clear_seconds)


def test_a_figure_over_a_mark_raises_the_level_at_once() -> None:
    h = hysteresis()
    assert h.step({"disk_used_ratio": 0.5}, 0.0) == NORMAL
    assert h.step({"disk_used_ratio": 0.81}, 1.0) == WARNING
    assert h.trigger == "disk_used_ratio"
    assert h.step({"append_p99_seconds": math.inf, "disk_used_ratio": 0.81}, 2.0) == DEGRADED
    assert h.trigger == "append_p99_seconds"


def test_the_level_comes_down_only_below_the_clear_mark_for_the_clear_time() -> None:
    h = hysteresis(clear_seconds=10.0)
    h.step({"append_error_ratio": 0.06}, 0.0)
    assert h.level == DEGRADED
    # Below the mark (5%) but above 90% of it: held.
    assert h.step({"append_error_ratio": 0.046}, 1.0) == DEGRADED
    assert h.step({"append_error_ratio": 0.046}, 100.0) == DEGRADED
    # Below the clear mark, but not yet for long enough.
    assert h.step({"append_error_ratio": 0.02}, 101.0) == DEGRADED
    assert h.step({"append_error_ratio": 0.02}, 110.0) == DEGRADED
    # A blip back over the clear mark restarts the wait.
    assert h.step({"append_error_ratio": 0.047}, 110.5) == DEGRADED
    assert h.step({"append_error_ratio": 0.02}, 111.0) == DEGRADED
    assert h.step({"append_error_ratio": 0.02}, 120.9) == DEGRADED
    # 2% is over the warning mark (1%): down to warning, not normal.
    assert h.step({"append_error_ratio": 0.02}, 121.0) == WARNING
    assert h.trigger == "append_error_ratio"
    assert h.step({"append_error_ratio": None}, 122.0) == WARNING  # unknown: no trigger
    assert h.step({"append_error_ratio": None}, 132.0) == NORMAL
    assert h.trigger == ""


def test_a_used_ratio_never_degrades_by_default_and_memory_does() -> None:
    h = hysteresis()
    assert h.step({"map_used_ratio": 1.0, "disk_used_ratio": 1.0}, 0.0) == WARNING
    assert h.step({"memory_used_ratio": 0.96}, 1.0) == DEGRADED
    assert h.trigger == "memory_used_ratio"


def test_the_window_is_over_the_last_seconds() -> None:
    w = Window(10.0)
    fast = ((0.01, 100.0), (1.0, 100.0), (math.inf, 100.0))
    assert w.add(0.0, Sample(fast, 100.0, 0.0)) == (None, None)
    slow = ((0.01, 100.0), (1.0, 100.0), (math.inf, 200.0))
    p99, errors = w.add(5.0, Sample(slow, 200.0, 10.0))
    assert (p99, errors) == (math.inf, 0.1)
    # 15 s on: the first sample left the window; nothing new since the second.
    assert w.add(15.0, Sample(slow, 200.0, 10.0)) == (None, None)


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.applied: list[str] = []
        self.fail = False

    def record(self, event_type: str, data: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("no space")
        self.events.append((event_type, data))

    def apply(self, level: str, trigger: str, position: int | None) -> None:
        # The level takes effect only after its event is recorded.
        assert self.events and self.events[-1][1].get("to") == level
        self.applied.append(level)


def controller(figures: dict[str, float | None], corrupt: Finding | None = None) -> tuple[
    Controller, FakeRecorder
]:  # fmt: skip
    rec = FakeRecorder()
    clock = iter(range(1000))
    c = Controller(SETTINGS, lambda: figures, rec.apply, corrupt=corrupt,
                   clock=lambda: float(next(clock)))  # fmt: skip
    c._record = rec.record  # started without its thread: ticks are called by hand
    return c, rec


def test_an_operator_forces_and_clears_a_level_and_each_call_is_recorded_first() -> None:
    c, rec = controller({"disk_used_ratio": 0.1})
    c.tick()
    assert rec.events == []
    with pytest.raises(InvalidArgument):
        c.degrade(DEGRADED, "")
    c.degrade(DEGRADED, "maintenance")
    assert [t for t, _ in rec.events] == ["EmergencyOperation", "SystemDegradationDetected"]
    assert rec.events[1][1]["trigger"] == "operator"
    c.tick()  # the triggers do not lift a forced level
    assert c.level == DEGRADED
    c.recover("done")
    assert [t for t, _ in rec.events][2:] == ["EmergencyOperation", "DegradationRecovery"]
    assert rec.applied == [DEGRADED, NORMAL]


def test_a_failed_write_keeps_the_level_and_the_next_evaluation_retries() -> None:
    figures: dict[str, float | None] = {"append_p99_seconds": math.inf}
    c, rec = controller(figures)
    rec.fail = True
    with pytest.raises(OSError):
        c.tick()
    assert c.level == NORMAL and rec.applied == []
    rec.fail = False
    c.tick()
    assert c.level == DEGRADED and rec.applied == [DEGRADED]


def test_corruption_holds_degraded_until_an_operator_recovers() -> None:
    c, rec = controller({})
    c.corruption_found(Finding("checksum", 7, "stored event at position 7 failed"))
    c.tick()
    assert (c.level, c.trigger) == (DEGRADED, "corruption")
    assert rec.events[-1][1]["figures"]["corruption"] == {"what": "checksum", "position": 7}
    c.tick()
    assert c.level == DEGRADED
    c.recover("repaired")
    assert c.level == NORMAL


def test_the_gate_refuses_all_but_the_degradation_types() -> None:
    gate = WriteGate()
    assert gate.refusal is None
    gate.set(DEGRADED, "corruption", 3)
    assert gate.refusal is not None
    assert gate.refusal.metadata["position"] == "3"
    assert allowlisted(system_event("EmergencyOperation", {}))
    assert not allowlisted(system_event("OrderPlaced", {}))
    gate.set(WARNING)
    assert gate.refusal is None and gate.level == WARNING


def test_only_the_servers_failures_count_as_append_errors() -> None:
    from prometheus_client import CollectorRegistry

    from lighthouse_store.metrics import DaemonMetrics
    from lighthouse_store.ops import _append_sample

    metrics = DaemonMetrics(CollectorRegistry())
    rpc = metrics.rpc["Append"]
    assert rpc is not None
    for _ in range(10):
        rpc.requests.inc()
    for reason in ("DEGRADED", "OVERLOADED", "WRONG_EXPECTED_REVISION", "INVALID_ARGUMENT",
                   "STORAGE_FAILURE", "INTERNAL"):  # fmt: skip
        metrics.rpc_error("Append", "X", "recoverable", reason)
    sample = _append_sample(metrics.append_families())
    assert (sample.requests, sample.errors) == (10, 2)
