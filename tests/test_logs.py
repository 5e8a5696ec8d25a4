"""The daemon's log lines (logs.py): their shape, one line per failed request
and none per success, and no error for a client that cancels a call."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from opentelemetry.sdk.trace import TracerProvider
from subscriber import Subscriber
from support import (
    DaemonFactory,
    append,
    events,
    expect_code,
    new_event,
    wait_until,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store import logs
from lighthouse_store.testing import DaemonProcess

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(
    r"(?P<ts>\S+) (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) +(?P<component>[\w.]+): (?P<msg>.*)"
)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as one JSON object (a line that is not fails the test)."""
    out = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        out.append(entry)
    return out


def assert_shape(entry: dict[str, Any]) -> None:
    assert list(entry)[:4] == ["timestamp", "level", "component", "message"], entry
    assert RFC3339_UTC.fullmatch(entry["timestamp"]), entry
    when = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
    assert when.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 3600, "not UTC"
    assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, entry
    assert entry["component"].startswith("lighthouse_store."), entry


def failures(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in lines if "method" in e and "code" in e]


def test_every_line_is_a_json_object_with_the_fields(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2)
    append(daemon.stub(), "shape", events(2))
    daemon.stop()
    lines = json_lines(daemon.log_text())
    assert len(lines) >= 6  # start, ready workers, drain, stop: supervisor and workers
    for entry in lines:
        assert_shape(entry)
    by_worker = {e.get("worker") for e in lines}
    assert by_worker == {None, 0, 1}, "the supervisor's lines and each worker's"


def test_a_failed_request_logs_one_line_and_a_success_none(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    append(stub, "orders-1", new_event(metadata={"correlation_id": "corr-ok"}), "no_stream")
    err = expect_code(
        grpc.StatusCode.FAILED_PRECONDITION, append, stub, "orders-1",
        new_event(metadata={"correlation_id": "corr-42"}), "no_stream",
    )  # fmt: skip
    wait_until(lambda: failures(json_lines(daemon.log_text())), "the failure's line")
    before = daemon.log_text()
    (line,) = failures(json_lines(before))
    assert_shape(line)
    assert line["level"] == "warning"
    assert line["method"] == "Append"
    assert line["code"] == "FAILED_PRECONDITION"
    assert line["reason"] == "WRONG_EXPECTED_REVISION"
    assert line["failure_class"] == "human_intervention"
    assert line["peer"].startswith("ipv4:127.0.0.1:"), line
    assert line["correlation_id"] == "corr-42"
    assert err.details() in line["message"]
    assert "exception" not in line
    assert "corr-ok" not in before

    # Successes after it add no line: the next line is the next failure's.
    for _ in range(20):
        append(stub, "orders-2", events(3))
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent,
                pb.GetEventRequest(event_id="0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d"))  # fmt: skip
    wait_until(lambda: len(failures(json_lines(daemon.log_text()))) == 2, "the second failure")
    new = json_lines(daemon.log_text()[len(before) :])
    assert [(e["method"], e["code"]) for e in new] == [("GetEvent", "NOT_FOUND")]


def test_a_server_failure_logs_an_error_line(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    append(daemon.stub(), "s", events(3))
    daemon.stop()
    daemon.corrupt_record(2)  # not the newest, which start-up checks
    daemon.start()
    expect_code(grpc.StatusCode.DATA_LOSS, lambda: list(daemon.stub().Read(
        pb.ReadRequest(stream="$all"), timeout=30)))  # fmt: skip
    wait_until(lambda: failures(json_lines(daemon.log_text())), "the failure's line")
    (line,) = failures(json_lines(daemon.log_text()))
    assert (line["level"], line["method"], line["code"]) == ("error", "Read", "DATA_LOSS")
    assert (line["reason"], line["failure_class"]) == ("CORRUPTION", "restart_required")


def test_text_format_is_one_readable_line_per_record(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2, extra_args=["--log-format", "text"])
    stub = daemon.stub()
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent,
                pb.GetEventRequest(event_id="0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d"))  # fmt: skip
    daemon.stop()
    lines = daemon.log_text().splitlines()
    assert lines
    for line in lines:
        m = TEXT_LINE.fullmatch(line)
        assert m is not None, line
        assert RFC3339_UTC.fullmatch(m["ts"]), line
    (failed,) = [line for line in lines if "GetEvent failed" in line]
    for part in (" WARNING ", "code=NOT_FOUND", "reason=EVENT_NOT_FOUND"):
        assert part in failed, failed
    assert re.search(r" worker=[01]\b", failed), failed


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Puts the test process's root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_line_carries_the_current_spans_ids(tmp_path: Path, root_logging: None) -> None:
    path = tmp_path / "spans.log"
    logs.configure("INFO", file=str(path), fields={})
    tracer = TracerProvider().get_tracer("test")
    log = logging.getLogger("lighthouse_store.test")
    with tracer.start_as_current_span("call") as span:
        log.info("inside")
    log.info("outside")
    inside, outside = json_lines(path.read_text())
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside and "span_id" not in outside


def test_grpcs_error_for_a_reply_to_a_gone_client_becomes_one_debug_line(
    tmp_path: Path, root_logging: None
) -> None:
    # The record as gRPC's aio server makes it when a reply cannot be sent
    # because the client cancelled (its _handle_exceptions): the end-to-end
    # test below cannot make that race happen on demand.
    path = tmp_path / "grpc.log"
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    method = "/lighthouse.store.v1.EventStoreService/Read"
    for level in ("INFO", "DEBUG"):
        logs.configure(level, file=str(path), fields={})
        try:
            raise RuntimeError('Failed "execute_batch"')
        except RuntimeError:
            # gRPC formats the message itself, as here.
            grpc_log.exception(f"ExecuteBatchError raised in core by servicer method [{method}]")
        grpc_log.error("another error")
    lines = json_lines(path.read_text())
    assert [e["level"] for e in lines] == ["error", "debug", "error"]
    assert lines[1]["message"].startswith(method) and "cancelled" in lines[1]["message"]
    assert "exception" not in lines[1]


def _cancel_in_every_way(address: str, rounds: int) -> None:
    """Cancel Reads and Subscribes mid-stream: by cancel(), by cancelling the
    task that reads, and by closing the channel under them."""

    async def run() -> None:
        for _ in range(rounds):
            channel = grpc.aio.insecure_channel(address)
            stub = pb_grpc.EventStoreServiceStub(channel)
            read = stub.Read(pb.ReadRequest(stream="$all"))
            await read.read()
            read.cancel()
            sub = stub.Subscribe()
            start = pb.SubscribeOptions(from_start=empty_pb2.Empty())
            await sub.write(pb.SubscribeRequest(options=start))
            await sub.read()
            await sub.read()
            sub.cancel()

            async def drain(call: Any) -> None:
                async for _ in call:
                    await asyncio.sleep(0.001)

            subs = [stub.Subscribe() for _ in range(3)]
            for s in subs:
                await s.write(pb.SubscribeRequest(options=start))
            tasks = [asyncio.create_task(drain(stub.Read(pb.ReadRequest(stream="$all"))))
                     for _ in range(3)] + [asyncio.create_task(drain(s)) for s in subs]  # fmt: skip
            await asyncio.sleep(0.05)
            tasks[0].cancel()
            tasks[3].cancel()
            await channel.close()  # the rest are cut off with the channel
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(asyncio.wait_for(run(), 120))


def test_a_client_that_cancels_reads_and_subscriptions_is_no_error(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    small_pages = ["--page-events", "5", "--subscribe-page-events", "5"]
    daemon = daemon_factory(workers=workers, extra_args=small_pages)
    stub = daemon.stub()
    for i in range(10):
        append(stub, f"s-{i}", events(100, data=b"x" * 500))
    sync_sub = Subscriber(stub, pb.SubscribeOptions(from_start=empty_pb2.Empty()))
    sync_sub.next()
    sync_sub.close()  # the blocking client's cancel()
    sync_read = stub.Read(pb.ReadRequest(stream="$all"), timeout=30)
    next(sync_read)
    sync_read.cancel()
    _cancel_in_every_way(daemon.address, rounds=10)
    append(stub, "after", events(1))  # still serving
    assert daemon.stop() == 0
    text = daemon.log_text()
    assert "Traceback" not in text
    lines = json_lines(text)
    # (A health level change is about the machine, not the cancels: a loaded
    # machine's commit p99 can move it to warning.)
    calls = [e for e in lines if e["component"] != "lighthouse_store.health"]
    assert not [e for e in calls if e["level"] in ("warning", "error", "critical")]
    assert not failures(lines)
