"""The HTTP operations endpoint of a real daemon: /health and its components,
how it agrees with gRPC health, and --http-listen (ops.py, http_ops.py, health.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from scrape import get, get_json, samples, value, wait_for
from support import (
    FULL_MAP_ARGS,
    DaemonFactory,
    append,
    error_info,
    events,
    expect_code,
    head,
)

from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.health import COMPONENTS
from lighthouse_store.testing import DaemonProcess

SERVICE = "lighthouse.store.v1.EventStoreService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_health(channel: grpc.Channel) -> tuple[int, ...]:
    """gRPC health for the server and the store service, over ``channel``."""
    health = health_pb2_grpc.HealthStub(channel)
    return tuple(
        health.Check(health_pb2.HealthCheckRequest(service=s), timeout=30).status
        for s in ("", SERVICE)
    )


def test_health_answers_with_every_check_and_200_when_serving(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers)
    append(d.stub(), "s", events(3))
    code, body = get_json(d, "/health")
    assert code == 200
    assert body["status"] == "pass" and body["level"] == "normal"
    assert set(body["checks"]) == set(COMPONENTS)
    assert {c["status"] for c in body["checks"].values()} == {"pass"}


def test_detailed_health_has_each_components_figures_and_the_history(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(workers=workers)
    append(d.stub(), "s", events(3))
    code, body = get_json(d, "/health/detailed")
    assert code == 200
    assert body["durability"] == "fsync"
    checks = body["checks"]
    storage = checks["storage"]
    assert storage["head_position"] == 3
    assert storage["data_bytes"] > 0
    assert 0 < storage["map_used_ratio"] < 1 and 0 < storage["disk_free_ratio"] <= 1
    assert storage["writes_blocked"] is False
    writer = checks["writer"]
    assert writer["queue_depth"] == 0
    assert 0 <= writer["last_commit_age_seconds"] < 600
    assert writer["stall_seconds"] == 5.0
    assert "commit_p99_seconds" in writer
    assert checks["subscriptions"] == {"status": "pass", "count": 0, "max_lag_events": 0}
    process = checks["process"]
    assert process["rss_bytes"] > 0 and 0 < process["open_fds"] < process["max_fds"]
    if workers > 1:
        assert [w["worker"] for w in process["workers"]] == list(range(workers))
        assert sorted(w["pid"] for w in process["workers"]) == d.worker_pids()
        assert process["workers_down"] == []
    assert body["history"] and body["history"][-1]["to"] == "normal"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_answers_alone(daemon: DaemonProcess, component: str) -> None:
    code, body = get_json(daemon, f"/health/{component}")
    assert code == 200
    assert body["component"] == component and body["status"] == "pass"


def test_an_unknown_component_is_404_with_the_list(daemon: DaemonProcess) -> None:
    code, body = get_json(daemon, "/health/disk")
    assert code == 404
    assert body["components"] == list(COMPONENTS)
    code, body = get_json(daemon, "/nothing-here")
    assert code == 404 and "/metrics" in body["paths"]


def test_metrics_are_prometheus_text(daemon: DaemonProcess) -> None:
    code, body, content_type = get(daemon, "/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE lighthouse_rpc_requests_total counter" in body


def test_writes_blocked_fail_health_and_grpc_health_until_a_commit_succeeds(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(extra_args=FULL_MAP_ARGS, workers=workers)
    channel = d.channel()  # one connection: one worker, whose writer refuses and recovers
    stub = pb_grpc.EventStoreServiceStub(channel)
    append(stub, "s", events(3))
    assert grpc_health(channel) == (SERVING, SERVING)
    err = expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED, append, stub, "s", events(500, data=b"x" * 8000)
    )
    assert error_info(err).reason == "STORAGE_FULL"

    code, body = get_json(d, "/health")
    assert code == 503
    assert body["status"] == "fail" and body["level"] == "degraded"
    assert body["checks"]["storage"]["status"] == "fail"
    assert "storage cannot take them" in body["checks"]["storage"]["reason"]
    assert get_json(d, "/health/storage")[0] == 503
    assert get_json(d, "/health/writer")[0] == 200
    assert value(samples(d), "lighthouse_writes_blocked") == 1
    # gRPC health says so too, on the worker that refused and on any other
    wait_for("gRPC health", lambda: grpc_health(channel), lambda s: s == (NOT_SERVING,) * 2)
    other = d.channel()
    wait_for("gRPC health", lambda: grpc_health(other), lambda s: s == (NOT_SERVING,) * 2)
    # reads go on meanwhile
    assert head(stub) == 3

    append(stub, "s", events(1))  # fits: storage takes writes again
    code, body = get_json(d, "/health")
    assert code == 200 and body["level"] == "normal"
    assert value(samples(d), "lighthouse_writes_blocked") == 0
    wait_for("gRPC health", lambda: grpc_health(channel), lambda s: s == (SERVING,) * 2)
    wait_for("gRPC health", lambda: grpc_health(other), lambda s: s == (SERVING,) * 2)
    history = get_json(d, "/health/detailed")[1]["history"]
    assert [h["to"] for h in history][-2:] == ["degraded", "normal"]
    assert "storage:" in history[-2]["reason"]


def test_a_stuck_writer_fails_health_within_the_stall_time_and_health_keeps_answering(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    stall = 0.5
    d = daemon_factory(
        extra_args=["--writer-stall-seconds", str(stall)],
        env=dict(os.environ, **{COMMIT_PAUSE_MS: "4000"}),
        workers=workers,
    )
    stub = d.stub()
    assert get_json(d, "/health")[0] == 200
    with ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        pending = [pool.submit(append, stub, f"s{i}", events(1)) for i in range(4)]
        _, body = wait_for(
            "the writer check", lambda: get_json(d, "/health"), lambda r: r[0] == 503
        )
        failed_after = time.monotonic() - started
        writer = body["checks"]["writer"]
        assert writer["status"] == "fail" and "no commit finishing" in writer["reason"]
        assert body["checks"]["storage"]["status"] == "pass"
        # It fails no sooner than the stall time (the first commit pauses 4 s).
        assert failed_after >= stall
        channel = d.channel()
        wait_for("gRPC health", lambda: grpc_health(channel), lambda s: s == (NOT_SERVING,) * 2)
        # The endpoint keeps answering while the writer is stuck.
        for _ in range(20):
            assert get(d, "/health")[0] == 503
        code, detailed = get_json(d, "/health/writer")
        assert code == 503 and detailed["queue_depth"] >= 1
        for f in pending:
            f.result(timeout=60)
    # Once the commits finish, it passes again, and so does gRPC health.
    wait_for("the writer check", lambda: get_json(d, "/health")[0], lambda c: c == 200)
    wait_for("gRPC health", lambda: grpc_health(channel), lambda s: s == (SERVING,) * 2)


def test_health_is_unavailable_while_draining(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(env=dict(os.environ, **{COMMIT_PAUSE_MS: "3000"}))
    stub = d.stub()
    blocked = threading.Thread(target=append, args=(stub, "s", events(1)))
    blocked.start()  # keeps the drain waiting for the writer
    time.sleep(0.2)
    assert d.proc is not None
    d.proc.send_signal(15)
    code, body = wait_for(
        "draining health", lambda: get_json(d, "/health"), lambda r: r[1]["level"] == "unavailable"
    )
    assert code == 503 and body["checks"]["process"]["reason"] == "shutting down"
    blocked.join(60)
    assert d.proc.wait(60) == 0


def test_the_ready_line_names_the_http_address(daemon_factory: DaemonFactory, workers: int) -> None:
    d = daemon_factory(workers=workers)
    host, port = d.ready["http"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0 and d.http_address == d.ready["http"]


def test_http_listen_off_serves_no_endpoint(daemon_factory: DaemonFactory, workers: int) -> None:
    d = daemon_factory(workers=workers, start=False)
    d.http_listen = "off"
    d.start()
    assert "http" not in d.ready and d.http_address == ""
    assert append(d.stub(), "s", events(1)).last_position == 1


def test_an_http_address_in_use_fails_the_start_with_status_2(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = daemon_factory(workers=workers, start=False)
        d.http_listen = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = subprocess.run(
            d.command(), capture_output=True, text=True, timeout=60, check=False,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"cannot serve HTTP on {d.http_listen}" in proc.stderr
    assert '"ready"' not in proc.stdout and "Traceback" not in proc.stderr
