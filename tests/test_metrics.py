"""/metrics of a real daemon: the values move with what clients do, over one
process and summed over workers; promtool finds the exposition clean; no
label carries a client's names (metrics.py, ops.py)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from prometheus_client.parser import text_string_to_metric_families
from scrape import get_json, metrics_text, promtool, samples, value, wait_for
from subscriber import Subscriber
from support import (
    FULL_MAP_ARGS,
    DaemonFactory,
    append,
    events,
    expect_code,
    new_id,
    read_all,
    read_stream,
    rpc_error,
    spread_stubs,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import __version__
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.space import free_ratio as disk_free_ratio
from lighthouse_store.testing import DaemonProcess

# Every label the daemon may put on a series (metrics.py says why these only).
BOUNDED_LABELS = {"method", "code", "failure_class", "reason", "worker", "version", "durability",
                  "le"}  # fmt: skip


def test_appends_move_the_write_counters_summed_over_workers(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers)
    first, second = spread_stubs(d, 2)  # with two workers, one each
    before = samples(d)
    one, two = events(1, data=b"a" * 100), events(2, data=b"b" * 100)
    append(first, "s", one)
    append(second, "s", two)
    append(second, "s", two)  # an idempotent retry: answered, nothing written
    after = samples(d)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("lighthouse_events_appended_total") == 3
    expected_bytes = sum(len(e.SerializeToString()) for e in one + two)
    assert 3 * 100 < grew("lighthouse_appended_bytes_total") <= expected_bytes + 3 * 64
    assert grew("lighthouse_rpc_requests_total", method="Append") == 3
    assert grew("lighthouse_rpc_duration_seconds_count", method="Append") == 3
    assert grew("lighthouse_commit_events_count") == 3
    assert grew("lighthouse_commit_events_sum") == 3
    assert grew("lighthouse_commit_events_bucket", le="1.0") == 2  # 1 event; the retry's 0
    assert grew("lighthouse_commit_duration_seconds_count") == 3
    assert grew("lighthouse_fsync_duration_seconds_count") == 3
    assert value(after, "lighthouse_head_position") == 3
    assert time.time() - value(after, "lighthouse_last_commit_timestamp_seconds") < 600
    assert value(after, "lighthouse_writer_queue_depth") == 0


def test_errors_are_counted_by_method_code_failure_class_and_reason(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers)
    stub = d.stub()
    append(stub, "s", events(2))
    expect_code(grpc.StatusCode.FAILED_PRECONDITION, append, stub, "s", events(1), expected=0)
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, append, stub, "bad/name", events(1))
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent, pb.GetEventRequest(event_id=new_id()))
    expect_code(grpc.StatusCode.NOT_FOUND, read_stream, stub, "no-such-stream")
    got = samples(d)
    errors = "lighthouse_rpc_errors_total"
    human = "human_intervention"
    assert value(got, errors, method="Append", code="FAILED_PRECONDITION", failure_class=human) == 1
    assert value(got, errors, method="Append", code="INVALID_ARGUMENT", failure_class=human) == 1
    assert value(got, errors, method="GetEvent", code="NOT_FOUND", failure_class=human) == 1
    assert value(got, errors, method="Read", code="NOT_FOUND", failure_class=human) == 1
    refusals = "lighthouse_append_refusals_total"
    assert value(got, refusals, reason="WRONG_EXPECTED_REVISION") == 1
    assert value(got, refusals, reason="INVALID_ARGUMENT") == 1
    assert value(got, "lighthouse_rpc_requests_total", method="GetEvent") == 1
    assert value(got, "lighthouse_rpc_duration_seconds_count", method="GetEvent") == 1
    assert value(got, "lighthouse_events_appended_total") == 2


def test_a_full_store_counts_its_refusals_and_blocks_writes(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra_args=FULL_MAP_ARGS)
    stub = d.stub()
    expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, append, stub, "s", events(500, data=b"x" * 8000)
    )
    got = samples(d)
    assert value(got, "lighthouse_append_refusals_total", reason="STORAGE_FULL") == 1
    assert value(got, "lighthouse_rpc_errors_total", method="Append", code="RESOURCE_EXHAUSTED",
                 failure_class="recoverable") == 1  # fmt: skip
    assert value(got, "lighthouse_writes_blocked") == 1
    assert value(got, "lighthouse_storage_map_used_ratio") > 0


def _statvfs(blocks: int, bfree: int, bavail: int) -> os.statvfs_result:
    return os.statvfs_result((4096, 4096, blocks, bfree, bavail, 0, 0, 0, 0, 255))


def test_the_disk_free_ratio_leaves_out_the_blocks_reserved_for_root() -> None:
    # 100 blocks: 40 used, 50 reserved for root, 10 free for others: df says
    # 80% used (40 of 40 + 10), and a daemon not run as root has 10 left.
    assert disk_free_ratio(_statvfs(100, 60, 10)) == 0.2
    assert disk_free_ratio(_statvfs(100, 50, 0)) == 0.0  # full for unprivileged writers
    assert disk_free_ratio(_statvfs(100, 100, 95)) == 1.0  # empty
    assert disk_free_ratio(_statvfs(0, 0, 0)) == 0.0


def test_the_disk_free_ratio_agrees_with_df(daemon: DaemonProcess) -> None:
    """``1 -`` the scraped ratio is the Use% that ``df`` prints for the data
    directory (which df rounds up; the volume is shared, so allow a point)."""
    ratio = value(samples(daemon), "lighthouse_storage_disk_free_ratio")
    df = subprocess.run(
        ["df", "--output=pcent", str(daemon.data_dir)], capture_output=True, text=True, check=True
    )
    used_percent = int(df.stdout.split()[-1].rstrip("%"))
    assert abs(100 * (1 - ratio) - used_percent) <= 1.5, (ratio, df.stdout)


def test_corruption_found_on_read_is_counted(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    append(d.stub(), "s", events(3))
    d.stop()
    d.corrupt_record(2)  # not the head, which the daemon checks at start
    d.start()
    expect_code(grpc.StatusCode.DATA_LOSS, lambda: read_all(d.stub()))
    got = samples(d)
    assert value(got, "lighthouse_corruption_detected_total") == 1
    assert value(got, "lighthouse_rpc_errors_total", method="Read", code="DATA_LOSS",
                 failure_class="restart_required") == 1  # fmt: skip


def test_subscriptions_are_counted_summed_over_workers(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers, extra_args=["--subscribe-fell-behind-events", "1"])
    stubs = spread_stubs(d, 2)
    append(stubs[0], "s", events(3))
    subs = [
        Subscriber(stubs[0], pb.SubscribeOptions(from_start={})),
        Subscriber(stubs[1], pb.SubscribeOptions(after_position=3, initial_credits=1)),
    ]
    try:
        for sub in subs:
            sub.next_kind("caught_up_position")
        got = samples(d)
        assert value(got, "lighthouse_subscriptions_active") == 2
        assert value(got, "lighthouse_subscription_resumes_total") == 1  # after_position
        assert value(got, "lighthouse_rpc_requests_total", method="Subscribe") == 2
        assert value(got, "lighthouse_subscription_lag_events_count") >= 1  # the first's catch-up
        assert value(got, "lighthouse_subscription_fell_behind_total") == 0
        # 5 more events put both live sessions more than 1 behind.
        append(stubs[0], "s", events(5))
        for sub in subs:
            sub.next_kind("fell_behind_position")
        wait_for(
            "fell behind",
            lambda: value(samples(d), "lighthouse_subscription_fell_behind_total"),
            lambda v: v == 2,
        )
    finally:
        for sub in subs:
            sub.close()
    wait_for(
        "subscriptions closed",
        lambda: value(samples(d), "lighthouse_subscriptions_active"),
        lambda v: v == 0,
    )


def test_a_lagging_subscription_shows_in_the_max_lag(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    sub = Subscriber(stub, pb.SubscribeOptions(from_start={}, initial_credits=1))
    try:
        sub.next_kind("caught_up_position")
        append(stub, "s", events(40))  # it may take one: 39 behind
        wait_for(
            "max lag",
            lambda: value(samples(daemon), "lighthouse_subscription_max_lag_events"),
            lambda v: v == 39,
        )
        assert get_json(daemon, "/health/subscriptions")[1]["max_lag_events"] == 39
    finally:
        sub.close()


def test_queue_depth_is_summed_over_workers(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(workers=2, env=dict(os.environ, **{COMMIT_PAUSE_MS: "2000"}))
    stubs = spread_stubs(d, 2)  # one per worker
    with ThreadPoolExecutor(2) as pool:
        pending = [pool.submit(append, stub, f"s{i}", events(1)) for i, stub in enumerate(stubs)]
        wait_for(
            "both workers' queues",
            lambda: value(samples(d), "lighthouse_writer_queue_depth"),
            lambda v: v == 2,
        )
        for f in pending:
            f.result(timeout=60)
    wait_for(
        "empty queues",
        lambda: value(samples(d), "lighthouse_writer_queue_depth"),
        lambda v: v == 0,
    )


def test_a_dead_workers_live_gauges_go_and_its_counts_stay(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(workers=2)
    victim = d.worker_pids()[0]
    stub = d.stub(victim)
    append(stub, "s", events(3))
    sub = Subscriber(stub, pb.SubscribeOptions(from_start={}))
    try:
        sub.next_kind("caught_up_position")
        assert value(samples(d), "lighthouse_subscriptions_active") == 1
        os.kill(victim, 9)
        got = wait_for(
            "the supervisor to forget the dead worker",
            lambda: samples(d),
            lambda s: value(s, "lighthouse_subscriptions_active") == 0,
        )
        assert value(got, "lighthouse_events_appended_total") == 3
        assert value(got, "lighthouse_rpc_requests_total", method="Append") == 1
    finally:
        sub.close()
    wait_for("a new worker", lambda: len(d.worker_pids()), lambda n: n == 2)
    assert victim not in d.worker_pids()
    wait_for(
        "the new worker serving",
        lambda: get_json(d, "/health")[1]["checks"]["process"]["status"],
        lambda s: s == "pass",
    )


def test_build_info_and_the_process_figures(daemon_factory: DaemonFactory, workers: int) -> None:
    d = daemon_factory(workers=workers)
    got = samples(d)
    assert value(got, "lighthouse_build_info", version=__version__, durability="fsync") == 1
    assert value(got, "process_resident_memory_bytes") > 0
    assert 0 < value(got, "process_open_fds") < value(got, "process_max_fds")
    assert value(got, "process_cpu_seconds_total") > 0
    for index in range(workers if workers > 1 else 0):
        assert value(got, "lighthouse_worker_resident_memory_bytes", worker=str(index)) > 0
        assert value(got, "lighthouse_worker_open_fds", worker=str(index)) > 0
    if workers == 1:
        assert not any(name.startswith("lighthouse_worker_") for name, _ in got)


def test_metrics_off_keeps_storage_process_and_health(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers, extra_args=["--metrics", "off"])
    append(d.stub(), "s", events(3))
    got = samples(d)
    names = {name for name, _ in got}
    assert not any(n.startswith(("lighthouse_rpc_", "lighthouse_commit_")) for n in names)
    assert "lighthouse_events_appended_total" not in names
    assert value(got, "lighthouse_head_position") == 3
    assert "lighthouse_writer_queue_depth" in names and "process_open_fds" in names
    assert get_json(d, "/health")[0] == 200


def test_no_label_carries_a_stream_consumer_event_or_type_name(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers)
    stub = d.stub()
    secrets = ["stream-secret-7f3a9c", "consumer-secret-88ab", "TypeSecret991"]
    stream, consumer, kind = secrets
    evs = events(3, type=kind)
    secrets.append(evs[0].event_id)
    append(stub, stream, evs)
    expect_code(grpc.StatusCode.FAILED_PRECONDITION, append, stub, stream, events(1), expected=0)
    stub.GetEvent(pb.GetEventRequest(event_id=evs[0].event_id), timeout=30)
    read_stream(stub, stream)
    sub = Subscriber(stub, pb.SubscribeOptions(consumer=consumer, from_start={}))
    try:
        sub.messages_until(3)
        sub.ack(3)
        sub.next_kind("checkpoint_stored_position")
    finally:
        sub.close()
    text = metrics_text(d)
    for secret in secrets:
        assert secret not in text
    labels = {
        label
        for family in text_string_to_metric_families(text)
        for s in family.samples
        for label in s.labels
    }
    assert labels <= BOUNDED_LABELS


def _load(daemon: DaemonProcess, stop: threading.Event) -> None:
    """Appends, reads, a lookup that fails and a subscription, a bounded number of times."""
    stub = daemon.stub()
    sub = Subscriber(stub, pb.SubscribeOptions(from_start={}))
    try:
        for i in range(40):
            if stop.is_set():
                return
            append(stub, f"load-{i % 4}", events(5))
            read_stream(stub, f"load-{i % 4}")
            rpc_error(stub.GetEvent, pb.GetEventRequest(event_id=new_id()))
    finally:
        sub.close()


def test_promtool_finds_the_scrape_clean_under_load(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    tool = promtool()
    d = daemon_factory(workers=workers)
    stop = threading.Event()
    loaders = [threading.Thread(target=_load, args=(d, stop)) for _ in range(3)]
    for t in loaders:
        t.start()
    scrapes: list[str] = []
    try:
        while any(t.is_alive() for t in loaders) and len(scrapes) < 20:
            scrapes.append(metrics_text(d))
            time.sleep(0.1)
    finally:
        stop.set()
        for t in loaders:
            t.join(120)
    scrapes.append(metrics_text(d))
    assert value(samples(d), "lighthouse_events_appended_total") > 0
    for text in scrapes:
        check = subprocess.run(
            [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            check.stdout + check.stderr
        )


def test_promtool_catches_a_bad_exposition() -> None:
    """The check above can fail: promtool objects to a counter without _total."""
    tool = promtool()
    bad = "# HELP things Things.\n# TYPE things counter\nthings 1\n"
    check = subprocess.run([tool, "check", "metrics"], input=bad, capture_output=True, text=True)
    assert check.returncode != 0 or (check.stdout + check.stderr).strip()
