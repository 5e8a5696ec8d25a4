"""The client library against a real daemon: every method, every error class."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from support import DaemonFactory

from lighthouse_client import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AsyncStoreClient,
    Corruption,
    DeadlineExceeded,
    EventIdConflict,
    EventNotFound,
    FailureClass,
    Filter,
    InvalidRequest,
    NewEvent,
    RetryPolicy,
    StoreClient,
    StreamNotFound,
    Unavailable,
    WrongExpectedRevision,
)
from lighthouse_store.testing import DaemonProcess


def test_sync_client_every_method(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as client:
        placed = NewEvent("Placed", b'{"n": 1}')
        paid = NewEvent("Paid", b"{}", metadata={"correlation_id": "c"})
        first = client.append("orders-1", [placed, paid], NO_STREAM)
        assert (first.first_position, first.last_position, first.last_revision) == (1, 2, 1)
        assert not first.queued
        client.append("orders-1", NewEvent("Shipped"), 1)
        client.append("orders-1", NewEvent("Closed"), STREAM_EXISTS)
        client.append("users-1", NewEvent("Joined"), ANY)
        events = client.read_stream("orders-1")
        assert [e.event_type for e in events] == ["Placed", "Paid", "Shipped", "Closed"]
        assert not events.stale
        assert events[0].data == b'{"n": 1}' and events[0].content_type == "application/json"
        assert events[1].metadata == {"correlation_id": "c"}
        # Ids default to UUIDv7 (version nibble 7).
        assert all(e.event_id[14] == "7" for e in events)
        back = client.read_stream("orders-1", from_revision=2, backwards=True, max_count=2)
        assert [e.revision for e in back] == [2, 1]
        everything = client.read_all()
        assert [e.position for e in everything] == [1, 2, 3, 4, 5]
        only = client.read_all(filter=Filter(stream_prefixes=("users-",)))
        assert [e.stream for e in only] == ["users-1"]
        by_corr = client.read_all(filter=Filter(correlation_id="c"))
        assert [e.event_type for e in by_corr] == ["Paid"]
        cut = everything[2].recorded_at
        windowed = client.read_all(from_time=cut)
        assert windowed and all(e.recorded_at >= cut for e in windowed)
        got = client.get_event(events[2].event_id)
        assert got.event == events[2] and not got.stale
        info = client.info()
        assert info.head_position == 5 and info.durability == "fsync"
        assert info.limits.max_events_per_append == 1000


def test_async_client_every_method(daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with AsyncStoreClient(daemon.address) as client:
            r = await client.append("s", [NewEvent("A"), NewEvent("B")], NO_STREAM)
            assert r.last_revision == 1
            events = await client.read_stream("s")
            assert [e.event_type for e in events] == ["A", "B"]
            assert (await client.get_event(events[1].event_id)).event.position == 2
            assert [e.position for e in await client.read_all(backwards=True)] == [2, 1]
            assert (await client.info()).head_position == 2
            with pytest.raises(WrongExpectedRevision):
                await client.append("s", NewEvent("C"), NO_STREAM)
            sub = client.subscribe(start="start")
            seen = [(await sub.__anext__()).position for _ in range(2)]
            await client.append("s", NewEvent("C"))
            seen.append((await sub.__anext__()).position)
            assert seen == [1, 2, 3]
            await sub.close()

    asyncio.run(main())


def test_errors_map_to_the_exception_tree(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as client:
        client.append("s", [NewEvent("A")], NO_STREAM)
        with pytest.raises(WrongExpectedRevision) as wrong:
            client.append("s", NewEvent("B"), 5)
        assert wrong.value.actual == 0 and wrong.value.expected == "5"
        assert wrong.value.failure_class is FailureClass.HUMAN_INTERVENTION
        assert not wrong.value.retryable
        fixed = NewEvent("A", b"one")
        client.append("t", fixed)
        with pytest.raises(EventIdConflict):
            client.append("t", NewEvent("A", b"two", event_id=fixed.event_id))
        with pytest.raises(InvalidRequest) as invalid:
            client.append("bad/name", NewEvent("A"))
        assert "stream" in invalid.value.message
        with pytest.raises(StreamNotFound):
            client.read_stream("nope")
        with pytest.raises(EventNotFound):
            client.get_event("0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d")
        with pytest.raises(DeadlineExceeded) as late:
            client.read_all(timeout=0.000_001)
        assert late.value.failure_class is FailureClass.RECOVERABLE


def test_unreachable_daemon_is_unavailable(tmp_path: Path) -> None:
    # A few quick retries, well inside the deadline: when the deadline cuts the
    # last attempt short, the error is DeadlineExceeded instead (also retryable).
    policy = RetryPolicy(max_attempts=3)
    with StoreClient("127.0.0.1:1", timeout=30.0, retry=policy) as client:
        with pytest.raises(Unavailable) as err:
            client.info()
        assert err.value.retryable


def test_corruption_is_restart_required(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    with StoreClient(daemon.address) as client:
        client.append("s", [NewEvent("A", b"payload-" + bytes(100)) for _ in range(3)])
        target = client.read_stream("s")[1]
    with pytest.raises(RuntimeError):
        daemon.corrupt_record(2)  # never under a running daemon
    assert daemon.stop() == 0
    daemon.corrupt_record(2)
    daemon.start()
    with StoreClient(daemon.address, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(Corruption) as err:
            client.get_event(target.event_id)
        assert err.value.position == 2
        assert err.value.failure_class is FailureClass.RESTART_REQUIRED
        first = client.read_stream("s", max_count=1)[0]
        assert client.get_event(first.event_id).event.revision == 0


def test_every_call_has_a_deadline(daemon: DaemonProcess) -> None:
    # A daemon that is stopped (SIGSTOP) accepts connections but never answers.
    with StoreClient(daemon.address, timeout=0.5) as client:
        client.info()
        assert daemon.proc is not None
        daemon.proc.send_signal(19)  # SIGSTOP
        try:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                client.info()
            assert time.monotonic() - started < 30  # bounded; not a speed claim
        finally:
            daemon.proc.send_signal(18)  # SIGCONT


def test_recorded_at_is_a_utc_datetime(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as client:
        client.append("s", NewEvent("A"))
        (event,) = client.read_stream("s")
        assert event.recorded_at.tzinfo is UTC
        assert abs((datetime.now(UTC) - event.recorded_at).total_seconds()) < 3600


def test_handle_rpc_error_without_details() -> None:
    from lighthouse_client import handle_rpc_error

    class Plain(grpc.RpcError):  # type: ignore[misc]
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.PERMISSION_DENIED

        def details(self) -> str:
            return "no"

        def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
            return (("grpc-status-details-bin", b"\xff\xffnot a status"),)

    err = handle_rpc_error(Plain())
    assert type(err).__name__ == "PermissionDenied"
    assert err.failure_class is FailureClass.HUMAN_INTERVENTION


@pytest.mark.timeout(30, method="thread")  # a hang ends the run: no teardown could
def test_a_blocking_call_from_the_client_s_own_loop_raises_instead_of_hanging() -> None:
    # (e.g. from an on_conflict callback, which runs on that loop)
    with StoreClient("127.0.0.1:1") as client:

        async def inside() -> None:
            with pytest.raises(RuntimeError, match="inside its own event loop"):
                client.info()

        client._loop.run(inside())
        with pytest.raises(ValueError, match="raised on the loop"):
            client._loop.run(_raise(ValueError("raised on the loop")))
        with pytest.raises(TypeError):  # not a coroutine: the loop cannot start it
            client._loop.run(42)  # type: ignore[arg-type]


async def _raise(exc: Exception) -> None:
    raise exc
