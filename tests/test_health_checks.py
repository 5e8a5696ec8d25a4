"""The health checks' rules (health.py): pure logic on figures made up here."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from lighthouse_store.health import (
    HISTORY,
    Figures,
    HealthMonitor,
    StorageFigures,
    Thresholds,
    UsageFigures,
    WriterFigures,
    evaluate,
    p99_between,
)

NOW = 1_800_000_000.0
T = Thresholds(stall_seconds=5.0)


def figures(**changes: object) -> Figures:
    base = Figures(
        at=NOW,
        not_serving="",
        writers=(WriterFigures(last_commit=NOW - 1),),
        storage=StorageFigures(data_bytes=1 << 20, map_used_ratio=0.1, disk_free_ratio=0.5),
        process=UsageFigures(rss_bytes=50 << 20, open_fds=30, max_fds=1024),
        durability="fsync",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_all_pass_is_normal_and_200() -> None:
    r = evaluate(figures(), T)
    assert (r.status, r.level, r.http_status, r.writes_ok) == ("pass", "normal", 200, True)
    assert r.summary()["checks"] == {n: {"status": "pass"} for n in r.checks}


def test_a_writer_with_appends_waiting_past_the_stall_time_fails() -> None:
    waiting = WriterFigures(queue_depth=3, busy_since=NOW - 5.5, last_commit=NOW - 60)
    r = evaluate(figures(writers=(WriterFigures(), waiting)), T)
    assert r.checks["writer"].status == "fail" and r.http_status == 503
    assert (r.level, r.writes_ok) == ("degraded", False)
    assert "5.5 s" in r.checks["writer"].reason
    assert r.checks["writer"].figures["queue_depth"] == 3


def test_waiting_up_to_the_stall_time_or_an_idle_writer_passes() -> None:
    waiting = WriterFigures(queue_depth=3, busy_since=NOW - 4.9, last_commit=NOW - 60)
    assert evaluate(figures(writers=(waiting,)), T).checks["writer"].status == "pass"
    idle = WriterFigures(queue_depth=0, busy_since=0.0, last_commit=NOW - 3600)
    assert evaluate(figures(writers=(idle,)), T).checks["writer"].status == "pass"


def test_the_stalled_worker_is_named() -> None:
    stuck = WriterFigures(worker=1, queue_depth=1, busy_since=NOW - 9)
    r = evaluate(figures(writers=(WriterFigures(worker=0), stuck)), T)
    assert r.checks["writer"].reason.endswith("in worker 1")


def test_blocked_writes_fail_storage_from_any_worker() -> None:
    r = evaluate(figures(writers=(WriterFigures(), WriterFigures(writes_blocked=True))), T)
    assert r.checks["storage"].status == "fail" and r.checks["storage"].figures["writes_blocked"]
    assert (r.level, r.http_status, r.writes_ok) == ("degraded", 503, False)


@pytest.mark.parametrize(
    ("storage", "warns"),
    [
        (StorageFigures(map_used_ratio=0.79, disk_free_ratio=0.21), False),
        (StorageFigures(map_used_ratio=0.80, disk_free_ratio=0.9), True),
        (StorageFigures(map_used_ratio=0.1, disk_free_ratio=0.2), True),
    ],
)
def test_a_map_or_volume_80_percent_used_warns(storage: StorageFigures, warns: bool) -> None:
    r = evaluate(figures(storage=storage), T)
    assert r.checks["storage"].status == ("warn" if warns else "pass")
    assert (r.level, r.http_status) == (("warning" if warns else "normal"), 200)


def test_descriptors_at_75_percent_of_the_limit_warn_for_a_worker_too() -> None:
    worker = UsageFigures(open_fds=768, max_fds=1024, worker=1, pid=42)
    r = evaluate(figures(worker_usage=(worker,)), T)
    assert r.checks["process"].status == "warn" and "worker 1" in r.checks["process"].reason
    worker = replace(worker, open_fds=767)
    assert evaluate(figures(worker_usage=(worker,)), T).checks["process"].status == "pass"


def test_a_lagging_subscription_warns_and_never_fails() -> None:
    lagging = WriterFigures(subscriptions=2, max_lag=10_001)
    r = evaluate(figures(writers=(lagging,)), Thresholds(lag_warn_events=10_000))
    assert r.checks["subscriptions"].status == "warn" and r.http_status == 200
    assert r.checks["subscriptions"].figures == {"count": 2, "max_lag_events": 10_001}


def test_a_slow_commit_p99_warns() -> None:
    assert evaluate(figures(), T, commit_p99=0.25).checks["writer"].status == "warn"
    assert evaluate(figures(), T, commit_p99=0.1).checks["writer"].status == "pass"
    r = evaluate(figures(), T, commit_p99=math.inf)
    assert r.checks["writer"].figures["commit_p99_seconds"] == "+Inf"


def test_nothing_serving_is_unavailable_but_grpc_health_is_not_told() -> None:
    r = evaluate(figures(not_serving="shutting down"), T)
    assert (r.level, r.http_status) == ("unavailable", 503)
    assert r.checks["process"].reason == "shutting down"
    assert r.writes_ok  # gRPC says NOT_SERVING itself while draining


def test_a_worker_down_while_others_serve_warns() -> None:
    r = evaluate(figures(workers_down=(1,)), T)
    assert r.checks["process"].status == "warn" and r.http_status == 200


def test_the_component_view_has_its_own_status_code() -> None:
    r = evaluate(figures(writers=(WriterFigures(writes_blocked=True),)), T)
    assert r.component("storage")[0] == 503
    code, body = r.component("writer")
    assert code == 200 and body["component"] == "writer" and body["status"] == "pass"


def test_the_p99_is_the_bucket_bound_of_what_was_observed_between_two_readings() -> None:
    old = ((0.001, 10.0), (0.01, 20.0), (math.inf, 20.0))
    new = ((0.001, 10.0), (0.01, 119.0), (math.inf, 120.0))
    assert p99_between(old, new) == 0.01  # 99 of the 100 new ones within 10 ms
    assert p99_between(old, ((0.001, 10.0), (0.01, 20.0), (math.inf, 30.0))) == math.inf
    assert p99_between(old, old) is None
    assert p99_between((), new) == 0.01  # no earlier reading: everything so far
    assert p99_between((), ()) is None


class FakeSource:
    def __init__(self) -> None:
        self.now = figures()

    def __call__(self) -> Figures:
        return self.now


def test_the_monitor_tells_each_change_of_verdict_once_and_in_order() -> None:
    source = FakeSource()
    told: list[bool] = []
    monitor = HealthMonitor(source, T)
    monitor.set_verdict_hook(told.append)
    assert told == [True]
    monitor.report()
    source.now = figures(writers=(WriterFigures(writes_blocked=True),))
    monitor.report()
    monitor.report()
    source.now = figures(storage=StorageFigures(map_used_ratio=0.9))  # warning: still serving
    monitor.report()
    assert told == [True, False, True]


def test_the_history_keeps_the_recent_level_changes() -> None:
    source = FakeSource()
    monitor = HealthMonitor(source, T)
    levels = [figures(), figures(storage=StorageFigures(map_used_ratio=0.9))]
    for i in range(HISTORY + 5):
        source.now = replace(levels[i % 2], at=NOW + i)
        monitor.report()
    history = monitor.report().history
    assert len(history) == HISTORY
    assert [(h["from"], h["to"]) for h in history[-2:]] == [
        ("normal", "warning"),
        ("warning", "normal"),
    ]  # the last of 25 readings is normal
    assert "map is 90% used" in history[-2]["reason"] and history[-1]["reason"] == ""


def test_figures_that_cannot_be_read_fail_the_check() -> None:
    def broken() -> Figures:
        raise OSError("gone")

    r = HealthMonitor(broken, T).report()
    assert r.http_status == 503 and "unreadable" in r.checks["process"].reason
