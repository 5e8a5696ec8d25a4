"""The degradation controller against real daemons (1 and 2 workers): an
operator's degrade and recover, an automatic trigger, corruption the scrub finds."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from subscriber import Subscriber
from support import (
    DaemonFactory,
    append,
    append_request,
    error_info,
    events,
    info,
    read_all,
    read_stream,
    rpc_error,
    spread_stubs,
    wait_until,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

# The bound on how soon every serving process obeys a new level.
OBEYED_WITHIN_S = 5.0


def admin(daemon: DaemonProcess, *args: str) -> tuple[int, dict[str, Any], str]:
    """``lighthouse-store admin ...`` as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "lighthouse_store", "admin", *args, "--address", daemon.address],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = json.loads(done.stdout) if done.returncode == 0 else {}
    return done.returncode, out, done.stderr


def http_health(daemon: DaemonProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{daemon.http_address}/health", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(daemon: DaemonProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://{daemon.http_address}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def refused(stub: Any) -> bool:
    try:
        stub.Append(append_request("s", events(1)), timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        assert error_info(exc).reason == "DEGRADED"
        return True
    return False


def taken(stub: Any) -> bool:
    return not refused(stub)


def not_serving(health: Any, service: str) -> bool:
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return bool(response.status == health_pb2.HealthCheckResponse.NOT_SERVING)


def system_events(stub: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, json.loads(e.data)) for e in read_stream(stub, "$system")]


def test_an_operator_degrades_and_recovers(daemon_factory: DaemonFactory, workers: int) -> None:
    daemon = daemon_factory(workers=workers)
    stubs = spread_stubs(daemon, 2 * workers)
    stub = stubs[0]
    append(stub, "s", events(3))
    sub = Subscriber(stub, pb.SubscribeOptions(after_position=3, initial_credits=100))

    code, status, err = admin(daemon, "degrade", "--reason", "disk replaced tonight")
    assert code == 0, err
    assert (status["level"], status["trigger"], status["forced_level"]) == (
        "degraded", "operator", "degraded"
    )  # fmt: skip
    for s in stubs:  # every worker
        wait_until(functools.partial(refused, s), "every worker refuses appends", OBEYED_WITHIN_S)
    err_ = rpc_error(stub.Append, append_request("s", events(1)))
    assert err_.code() == grpc.StatusCode.UNAVAILABLE
    detail = error_info(err_)
    assert (detail.reason, detail.metadata["failure_class"]) == ("DEGRADED", "recoverable")
    details = rpc_status.from_call(err_)
    assert details is not None
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details.details)
    assert "Traceback" not in (err_.details() or "") and "/" not in (err_.details() or "")

    # The degradation types are taken, in any stream; reads go on.
    append(stub, "ops-log", events(1, type="EmergencyOperation"))
    assert [e.stream for e in read_all(stub)][-1] == "ops-log"
    assert all(info(s).degradation_level == "degraded" for s in stubs)
    health = health_pb2_grpc.HealthStub(daemon.channel())
    for service in ("", "lighthouse.store.v1.EventStoreService"):  # writes are refused
        wait_until(
            functools.partial(not_serving, health, service),
            f"gRPC health of {service!r} NOT_SERVING", OBEYED_WITHIN_S,
        )  # fmt: skip
    http, body = http_health(daemon)
    assert (http, body["level"]) == (503, "degraded")
    wait_until(lambda: metric(daemon, "lighthouse_degradation_level") == 2, "level gauge", 10)
    assert metric(daemon, "lighthouse_writes_blocked") == 1

    recorded = system_events(stub)
    assert [t for t, _ in recorded] == ["EmergencyOperation", "SystemDegradationDetected"]
    assert recorded[0][1] == {
        "action": "degrade", "level": "degraded", "reason": "disk replaced tonight"
    }  # fmt: skip
    change = recorded[1][1]
    assert (change["from"], change["to"], change["trigger"]) == ("normal", "degraded", "operator")
    assert "map_used_ratio" in change["thresholds"]
    # The subscription goes on, and sees the level's events as they are written.
    got, _ = sub.messages_until(3, timeout=30)
    assert [e.event_type for e in got] == [
        "EmergencyOperation", "SystemDegradationDetected", "EmergencyOperation"
    ]  # fmt: skip

    assert admin(daemon, "recover")[0] == 1  # a reason is required
    code, status, err = admin(daemon, "recover", "--reason", "done")
    assert code == 0, err
    assert (status["level"], status["forced_level"]) == ("normal", "")
    for s in stubs:
        wait_until(functools.partial(taken, s), "every worker takes appends", OBEYED_WITHIN_S)
    assert [t for t, _ in system_events(stub)][2:] == ["EmergencyOperation", "DegradationRecovery"]
    assert all(info(s).degradation_level == "normal" for s in stubs)
    wait_until(lambda: http_health(daemon)[0] == 200, "/health 200 again", 10)
    sub.close()


def test_append_p99_over_its_mark_degrades_and_clears_with_hysteresis(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    # Every commit pauses 1.2 s (faults.py): the Append p99 goes past 1 s.
    daemon = daemon_factory(
        workers=workers,
        env={**os.environ, COMMIT_PAUSE_MS: "1200"},
        extra_args=[
            "--degrade-window-seconds",
            "4",
            "--degrade-clear-seconds",
            "2",
            "--degrade-p99-warn-ms",
            "100",
            "--degrade-p99-degraded-ms",
            "1000",
        ],
    )
    stub = daemon.stub()
    append(stub, "s", events(1))
    slow_done = time.monotonic()
    wait_until(lambda: info(stub).degradation_level == "degraded", "degraded", OBEYED_WITHIN_S)
    assert time.monotonic() - slow_done < OBEYED_WITHIN_S + 1
    assert refused(stub)
    # No append since: the window empties, the p99 is unknown, and after the
    # clear time the level comes down.
    wait_until(lambda: info(stub).degradation_level == "normal", "normal again", 30)
    recorded = system_events(stub)
    assert [t for t, _ in recorded] == ["SystemDegradationDetected", "DegradationRecovery"]
    up, down = recorded[0][1], recorded[1][1]
    assert (up["trigger"], up["figures"]["append_p99_seconds"]) == ("append_p99_seconds", "+Inf")
    assert up["thresholds"]["append_p99_seconds"] == {"warn": 0.1, "degraded": 1.0}
    assert (down["from"], down["to"]) == ("degraded", "normal")


def test_corruption_the_scrub_finds_degrades_every_worker(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2)
    append(daemon.stub(), "s", events(200))
    assert daemon.stop() == 0
    daemon.corrupt_record(3)
    daemon.extra_args = ["--scrub-records-per-second", "100000"]
    daemon.start()
    stubs = spread_stubs(daemon, 4)
    for s in stubs:
        wait_until(functools.partial(refused, s), "every worker refuses appends", 60)
    err = rpc_error(stubs[0].Append, append_request("t", events(1)))
    assert error_info(err).metadata["position"] == "3"
    (change,) = [d for t, d in system_events(stubs[0]) if t == "SystemDegradationDetected"]
    assert (change["trigger"], change["figures"]["corruption"]["position"]) == ("corruption", 3)
    # Counted through corruption.add_hook: the scrub's findings, in the supervisor.
    assert metric(daemon, "lighthouse_corruption_detected_total") >= 1
    http, body = http_health(daemon)
    assert (http, body["level"]) == (503, "degraded")


def test_memory_over_the_limit_degrades(daemon_factory: DaemonFactory, workers: int) -> None:
    # A Python daemon's resident memory is far past 16 MiB: over 95% of the limit.
    daemon = daemon_factory(workers=workers, extra_args=["--memory-limit", "16MiB"])
    stub = daemon.stub()
    wait_until(lambda: info(stub).degradation_level == "degraded", "degraded", OBEYED_WITHIN_S)
    assert refused(stub)
    ((kind, change),) = system_events(stub)
    assert (kind, change["trigger"]) == ("SystemDegradationDetected", "memory_used_ratio")
    assert change["figures"]["memory_used_ratio"] > 0.95
