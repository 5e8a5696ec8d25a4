"""gRPC health service, server reflection and GetInfo / configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import DaemonFactory, append, events, expect_code, info, read_all

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

SERVICE = "lighthouse.store.v1.EventStoreService"


def _health(daemon: DaemonProcess) -> Any:
    return health_pb2_grpc.HealthStub(daemon.channel())


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_serving(daemon: DaemonProcess, service: str) -> None:
    resp = _health(daemon).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_not_found(daemon: DaemonProcess) -> None:
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        _health(daemon).Check,
        health_pb2.HealthCheckRequest(service="no.such.Service"),
        timeout=10,
    )


def test_health_watch_reports_serving(daemon: DaemonProcess) -> None:
    stream = _health(daemon).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
    first = next(iter(stream))
    stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(daemon: DaemonProcess) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(daemon.channel())
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resps = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
    names = {s.name for r in resps for s in r.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    req = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    resps = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
    assert resps[0].HasField("file_descriptor_response"), resps[0]


# -- GetInfo and configuration ---------------------------------------------


def test_get_info_defaults(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    i = info(stub)
    assert i.head_position == 0
    assert i.server_version
    assert i.durability == pb.DURABILITY_FSYNC
    append(stub, "s", events(3))
    assert info(stub).head_position == 3


def test_async_durability_reported(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra_args=["--durability", "async"])
    stub = d.stub()
    assert info(stub).durability == pb.DURABILITY_ASYNC
    assert append(stub, "s", events(2)).last_position == 2
    warnings = [
        json.loads(line) for line in d.log_text().splitlines() if '"level": "warning"' in line
    ]
    assert any(
        "durability async" in w["message"] and "not fsynced" in w["message"] for w in warnings
    ), warnings


def test_fsync_durability_logs_no_warning(daemon: DaemonProcess) -> None:
    assert '"level": "warning"' not in daemon.log_text()


def test_explicit_fsync_flag(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(extra_args=["--durability", "fsync"])
    assert info(d.stub()).durability == pb.DURABILITY_FSYNC


class EnvDaemon(DaemonProcess):
    """Configured through LIGHTHOUSE_* environment variables only."""

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lighthouse_store", "serve"]


def test_configuration_from_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "envdata"
    data_dir.mkdir()
    env = dict(
        os.environ,
        LIGHTHOUSE_LISTEN="127.0.0.1:0",
        LIGHTHOUSE_HTTP_LISTEN="127.0.0.1:0",
        LIGHTHOUSE_DATA_DIR=str(data_dir),
        LIGHTHOUSE_DURABILITY="async",
    )
    d = EnvDaemon(data_dir, env=env, log_path=tmp_path / "env.log")
    d.start()
    try:
        assert d.address.startswith("127.0.0.1:")
        stub = d.stub()
        assert info(stub).durability == pb.DURABILITY_ASYNC
        append(stub, "from-env", events(2))
        written = read_all(stub)
        assert d.stop() == 0
    finally:
        if d.running():
            d.kill9()
    # The events went to LIGHTHOUSE_DATA_DIR.
    with DaemonProcess(data_dir, log_path=tmp_path / "check.log") as check:
        assert read_all(check.stub()) == written


@pytest.mark.parametrize(
    "args",
    [
        ["--durability", "sometimes"],
        ["--max-event-data-bytes", "-1"],
        ["--max-events-per-append", "lots"],
        ["--listen", "not-an-address"],
        ["--listen", "127.0.0.1:99999"],
        ["--log-level", "loud"],
        ["--shutdown-grace-seconds", "-1"],
    ],
    ids=[
        "durability",
        "negative-limit",
        "non-numeric-limit",
        "listen",
        "listen-port",
        "log-level",
        "grace",
    ],
)
def test_bad_configuration_fails_fast(tmp_path: Path, args: Sequence[str]) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    cmd = [*DaemonProcess(data_dir).command(), *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # a usage error
    assert '"ready"' not in proc.stdout
    assert proc.stderr.strip()
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_store_that_cannot_be_opened_fails_in_one_line(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """(A corrupt newest record no longer stops the start: the daemon starts
    read-only, ``tests/test_integrity_start.py``.)"""
    daemon = daemon_factory()
    append(daemon.stub(), "s", events(3))
    assert daemon.stop() == 0
    (daemon.data_dir / "lmdb" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    expected = "cannot open the LMDB environment"
    proc = subprocess.run(
        daemon.command(), capture_output=True, text=True, timeout=30, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert '"ready"' not in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "lighthouse-store: cannot open the store: " in proc.stderr
    assert expected in proc.stderr, proc.stderr[-2000:]
