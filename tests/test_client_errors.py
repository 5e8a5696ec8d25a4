"""handle_rpc_error maps every status the daemon sends to the exception tree,
and the client retries what is recoverable (overload included)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from support import DaemonFactory, run_threads

from lighthouse_client import (
    Corruption,
    DeadlineExceeded,
    EventIdConflict,
    EventNotFound,
    FailureClass,
    Internal,
    InvalidRequest,
    NewEvent,
    Overloaded,
    PermissionDenied,
    StorageFull,
    StoreClient,
    StoreError,
    StreamNotFound,
    Unauthenticated,
    Unavailable,
    WrongExpectedRevision,
    handle_rpc_error,
)
from lighthouse_store import errors as server_errors
from lighthouse_store import status as server_status


class _Error(grpc.RpcError):  # type: ignore[misc]
    """A failed call as grpc hands it to the client (pure logic stand-in)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Any) -> None:
        self._code, self._message, self._trailers = code, message, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailers


def through_the_server_mapping(error: server_errors.StoreError) -> StoreError:
    """What the client makes of a daemon error: the daemon's real status
    mapping (status.to_status) fed to the client's handle_rpc_error."""
    code, message, trailers = server_status.to_status(error)
    return handle_rpc_error(_Error(code, message, trailers))


@pytest.mark.parametrize(
    ("server_error", "client_type", "failure_class"),
    [
        (server_errors.InvalidArgument("stream: bad"), InvalidRequest, "human_intervention"),
        (
            server_errors.WrongExpectedRevision("s", "3", "5"),
            WrongExpectedRevision,
            "human_intervention",
        ),
        (server_errors.EventIdConflict("dup"), EventIdConflict, "human_intervention"),
        (server_errors.StreamNotFound("s"), StreamNotFound, "human_intervention"),
        (server_errors.EventNotFound("e"), EventNotFound, "human_intervention"),
        (server_errors.Overloaded("busy", retry_after_ms=250), Overloaded, "recoverable"),
        (server_errors.StorageFull("full"), StorageFull, "recoverable"),
        (server_errors.ShuttingDown("bye"), Unavailable, "recoverable"),
        (server_errors.Corruption("bad crc", 42), Corruption, "restart_required"),
        (server_errors.StorageFailure("io"), Internal, "restart_required"),
        (server_errors.Internal("bug"), Internal, "human_intervention"),
    ],
)
def test_every_daemon_error_maps_to_its_exception(
    server_error: server_errors.StoreError, client_type: type[StoreError], failure_class: str
) -> None:
    err = through_the_server_mapping(server_error)
    assert type(err) is client_type
    assert err.failure_class is FailureClass(failure_class)
    assert err.retryable == (failure_class == "recoverable")
    assert err.message == server_error.message


def test_structured_details_survive() -> None:
    wrong = through_the_server_mapping(server_errors.WrongExpectedRevision("s", "3", "no_stream"))
    assert isinstance(wrong, WrongExpectedRevision)
    assert (wrong.stream, wrong.expected, wrong.actual) == ("s", "3", None)
    busy = through_the_server_mapping(server_errors.Overloaded("busy", retry_after_ms=250))
    assert isinstance(busy, Overloaded) and busy.retry_after == pytest.approx(0.25)
    full = through_the_server_mapping(server_errors.StorageFull("full", retry_after_ms=1500))
    assert isinstance(full, StorageFull) and full.retry_after == pytest.approx(1.5)
    bad = through_the_server_mapping(server_errors.Corruption("crc", 42))
    assert isinstance(bad, Corruption) and bad.position == 42


@pytest.mark.parametrize(
    ("code", "client_type"),
    [
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.INTERNAL, Unavailable),  # no ErrorInfo: the transport, not the daemon
        (grpc.StatusCode.UNKNOWN, Internal),
        (grpc.StatusCode.DATA_LOSS, Corruption),
    ],
)
def test_bare_status_codes(code: grpc.StatusCode, client_type: type[StoreError]) -> None:
    assert type(handle_rpc_error(_Error(code, "x", ()))) is client_type


def test_a_google_rpc_status_from_another_server_is_read_too() -> None:
    status = status_pb2.Status(code=8, message="slow down")
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="x"))
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=Duration(seconds=2)))
    trailers = (("grpc-status-details-bin", status.SerializeToString()),)
    err = handle_rpc_error(_Error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", trailers))
    assert isinstance(err, Overloaded) and err.retry_after == 2.0 and err.reason == "RATE_LIMITED"


@pytest.mark.slow
def test_overloaded_appends_are_retried_until_they_land(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(extra_args=["--max-queue", "1"])
    sent: list[NewEvent] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    with StoreClient(daemon.address, timeout=60.0) as client:

        def writer(t: int) -> None:
            try:
                for _ in range(40):
                    event = NewEvent("E")
                    with lock:
                        sent.append(event)
                    client.append(f"s-{t}", event)
            except BaseException as exc:
                failures.append(exc)

        run_threads(writer, 12, 120)
        assert not failures, failures
        stored = client.read_all()
        assert sorted(e.event_id for e in stored) == sorted(e.event_id for e in sent)


def test_async_errors_are_the_same_exceptions(daemon_factory: DaemonFactory) -> None:
    from lighthouse_client import NO_STREAM, AsyncStoreClient

    daemon = daemon_factory()

    async def main() -> None:
        async with AsyncStoreClient(daemon.address) as client:
            await client.append("s", NewEvent("A"), NO_STREAM)
            with pytest.raises(WrongExpectedRevision):
                await client.append("s", NewEvent("A"), NO_STREAM)
            with pytest.raises(StreamNotFound):
                await client.read_stream("missing")
            with pytest.raises(InvalidRequest):
                await client.append("$system", NewEvent("A"))

    asyncio.run(main())
