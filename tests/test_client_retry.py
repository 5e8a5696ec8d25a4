"""The client's retry policy (_retry.py) and read resume, against scripted
in-process servers (scripted.py, pytest-grpc): what is retried and what is
not, RetryInfo, a reply lost after a commit, the call's deadline, and a read
whose stream breaks in the middle."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from scripted import (
    MemoryLog,
    ScriptedStore,
    cut_after,
    daemon_error,
    fail,
    hang,
    reply,
    then,
    unavailable,
)

from lighthouse_client import (
    ANY,
    CircuitBreaker,
    Corruption,
    DeadlineExceeded,
    EventIdConflict,
    EventNotFound,
    Internal,
    InvalidRequest,
    NewEvent,
    PermissionDenied,
    RecordedEvent,
    RetryPolicy,
    StoreClient,
    StoreError,
    StreamNotFound,
    Unavailable,
    WrongExpectedRevision,
)
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import errors as server_errors

grpc_max_workers = 4  # pytest-grpc's server threads (its default is one)

# Backoff short enough that a test never waits on it; the deadline is the bound.
FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01)
INFO = pb.GetInfoResponse(head_position=7, server_version="scripted")
EVENT = pb.RecordedEvent(event_id="e-1", event_type="E", stream="s", position=1)

Op = Callable[[StoreClient], Any]
OPS: dict[str, tuple[str, Op, Any]] = {  # RPC, the client call, a good answer
    "append": (
        "Append",
        lambda c: c.append("s", NewEvent("E")),
        pb.AppendResponse(first_position=1, last_position=1),
    ),
    "read": ("Read", lambda c: c.read_stream("s"), [pb.ReadResponse(events=[EVENT])]),
    "get_event": ("GetEvent", lambda c: c.get_event("e-1"), pb.GetEventResponse(event=EVENT)),
    "info": ("GetInfo", lambda c: c.info(), INFO),
}


def client(address: str, timeout: float = 10.0) -> StoreClient:
    # A breaker that never opens: these tests are about the retry layer alone
    # (test_client_breaker.py has the breaker's).
    never_opens = CircuitBreaker(failure_threshold=10**9)
    return StoreClient(address, timeout=timeout, retry=FAST, breaker=never_opens)


def answer(rpc: str, good: Any) -> Any:
    """The step that answers ``rpc`` well (a Read answers with pages)."""
    return (lambda request, context: iter(good)) if rpc == "Read" else reply(good)


# -- what is not retried -------------------------------------------------------

NOT_RETRYABLE: dict[str, tuple[Any, type[StoreError]]] = {
    "invalid": (daemon_error(server_errors.InvalidArgument("stream: bad")), InvalidRequest),
    "wrong_expected_revision": (
        daemon_error(server_errors.WrongExpectedRevision("s", "3", "5")),
        WrongExpectedRevision,
    ),
    "event_id_conflict": (daemon_error(server_errors.EventIdConflict("dup")), EventIdConflict),
    "stream_not_found": (daemon_error(server_errors.StreamNotFound("s")), StreamNotFound),
    "event_not_found": (daemon_error(server_errors.EventNotFound("e")), EventNotFound),
    "corruption": (daemon_error(server_errors.Corruption("bad crc", 1)), Corruption),
    "storage_failure": (daemon_error(server_errors.StorageFailure("io")), Internal),
    "internal": (daemon_error(server_errors.Internal("bug")), Internal),
    "permission_denied": (fail(grpc.StatusCode.PERMISSION_DENIED, "no"), PermissionDenied),
    "unauthenticated": (fail(grpc.StatusCode.UNAUTHENTICATED, "who"), PermissionDenied),
    "message_too_large": (
        fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"),
        InvalidRequest,
    ),
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("error", list(NOT_RETRYABLE))
def test_a_non_retryable_error_costs_exactly_one_attempt(
    store: ScriptedStore, grpc_addr: str, op: str, error: str
) -> None:
    rpc, call, good = OPS[op]
    step, raised = NOT_RETRYABLE[error]
    store.on(rpc, step, answer(rpc, good))
    with client(grpc_addr) as c, pytest.raises(raised) as err:
        call(c)  # a retry would get the good answer
    assert not err.value.retryable
    assert len(store.requests(rpc)) == 1


# -- what is retried -------------------------------------------------------------

RECOVERABLE: dict[str, Any] = {
    "unavailable": unavailable(),
    "shutting_down": daemon_error(server_errors.ShuttingDown("bye")),
    "overloaded": daemon_error(server_errors.Overloaded("busy", retry_after_ms=1)),
    "storage_full": daemon_error(server_errors.StorageFull("disk filling", retry_after_ms=1)),
    "deadline_exceeded": fail(grpc.StatusCode.DEADLINE_EXCEEDED, "upstream too slow"),
    "aborted": fail(grpc.StatusCode.ABORTED, "try again"),
    "transport_internal": fail(grpc.StatusCode.INTERNAL, "stream reset"),  # no ErrorInfo
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("error", list(RECOVERABLE))
def test_a_recoverable_error_is_retried_until_the_call_succeeds(
    store: ScriptedStore, grpc_addr: str, op: str, error: str
) -> None:
    rpc, call, good = OPS[op]
    store.on(rpc, *[RECOVERABLE[error]] * 3, answer(rpc, good))
    with client(grpc_addr) as c:
        call(c)
    assert len(store.requests(rpc)) == 4


@pytest.mark.parametrize(
    "busy",
    [
        daemon_error(server_errors.Overloaded("busy", retry_after_ms=300)),
        daemon_error(server_errors.StorageFull("disk filling", retry_after_ms=300)),
    ],
    ids=["overloaded", "storage_full"],
)
def test_retry_info_is_a_floor_for_the_wait(
    store: ScriptedStore, grpc_addr: str, busy: Any
) -> None:
    store.on("GetInfo", busy, busy, reply(INFO))
    with client(grpc_addr) as c:
        assert c.info().head_position == 7
    at = [call.at for call in store.calls["GetInfo"]]
    assert len(at) == 3
    # FAST alone would wait at most 10 ms; the daemon asked for 300.
    assert [b - a >= 0.29 for a, b in itertools.pairwise(at)] == [True, True]


def test_a_reply_lost_after_the_commit_returns_the_original_result(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = MemoryLog()
    # The first append lands; the second is committed, then its reply is lost.
    store.on("Append", log.append, then(log.append, unavailable("reply lost")), log.append)
    events = [NewEvent("A"), NewEvent("B")]
    with client(grpc_addr) as c:
        c.append("s", NewEvent("first"))
        result = c.append("s", events, ANY)
    assert (result.first_position, result.last_position, result.last_revision) == (2, 3, 2)
    sent = [[e.event_id for e in r.events] for r in store.requests("Append")[1:]]
    assert sent == [[e.event_id for e in events]] * 2  # the retry sent the same ids
    assert [e.event_id for e in log.events[1:]] == [e.event_id for e in events]  # stored once


# -- the call's deadline -----------------------------------------------------------


def test_a_call_that_never_answers_ends_at_its_deadline(
    store: ScriptedStore, grpc_addr: str
) -> None:
    store.on("GetInfo", hang)
    started = time.monotonic()
    with client(grpc_addr, timeout=1.0) as c, pytest.raises(DeadlineExceeded) as err:
        c.info()
    assert time.monotonic() - started < 20  # bounded by the deadline; not a speed claim
    assert err.value.retryable
    (only,) = store.calls["GetInfo"]  # it had the whole deadline: no time for a second
    # (gRPC rounds the deadline it sends up a little.)
    assert only.time_remaining is not None and 0 < only.time_remaining <= 1.1


def test_a_call_out_of_time_before_its_first_attempt_sends_nothing(
    store: ScriptedStore, grpc_addr: str
) -> None:
    store.on("GetInfo", reply(INFO))
    breaker = CircuitBreaker(failure_threshold=10**9)
    with StoreClient(grpc_addr, retry=FAST, breaker=breaker) as c:
        with pytest.raises(DeadlineExceeded) as err:
            c.info(timeout=0)
        assert "before it could be sent" in err.value.message
        assert store.requests("GetInfo") == []
        # Not a sign that the daemon is unreachable.
        assert breaker.consecutive_failures == 0
        assert c.info().head_position == 7


def test_every_attempt_gets_only_what_is_left_of_the_call_s_deadline(
    store: ScriptedStore, grpc_addr: str
) -> None:
    store.on("GetInfo", unavailable())
    with client(grpc_addr, timeout=1.0) as c, pytest.raises((Unavailable, DeadlineExceeded)) as err:
        c.info()
    # The last real error (Unavailable, or DeadlineExceeded if the last attempt
    # ran out of time), not a synthetic one for an attempt never sent.
    assert "before it could be sent" not in err.value.message
    calls = store.calls["GetInfo"]
    assert len(calls) >= 2
    # Every attempt's deadline is the call's (gRPC rounds what it sends up a little).
    ends = [c.at + c.time_remaining for c in calls if c.time_remaining is not None]
    assert len(ends) == len(calls)
    # (Slack for the time each attempt takes to reach the server.)
    assert all(end <= calls[0].at + 1.3 for end in ends), [end - calls[0].at for end in ends]
    # No attempt starts after the deadline: the server sees each one arrive
    # within the same slack (an attempt sent just before the deadline may
    # arrive just after it, with no time left).
    assert calls[-1].at - calls[0].at < 1.3


# -- a read whose stream breaks ------------------------------------------------------


def stream_log() -> MemoryLog:
    log = MemoryLog(page_size=3)
    for n in range(8):  # stream "s": revisions 0..7; other streams in between
        log.append(pb.AppendRequest(stream="s", events=[pb.ProposedEvent(event_id=f"s-{n}")]))
        if n % 3 == 0:
            log.append(pb.AppendRequest(stream="o", events=[pb.ProposedEvent(event_id=f"o-{n}")]))
    return log


READS: dict[str, tuple[Op, str]] = {  # the client call, and the start field it resumes with
    "stream_forwards": (lambda c: c.read_stream("s"), "from_revision"),
    "stream_backwards": (lambda c: c.read_stream("s", backwards=True), "from_revision"),
    "stream_from": (lambda c: c.read_stream("s", from_revision=2), "from_revision"),
    "stream_max_count": (lambda c: c.read_stream("s", max_count=5), "from_revision"),
    "all_forwards": (lambda c: c.read_all(), "from_position"),
    "all_backwards": (lambda c: c.read_all(backwards=True), "from_position"),
    "all_from": (lambda c: c.read_all(from_position=3), "from_position"),
    "all_backwards_max_count": (lambda c: c.read_all(backwards=True, max_count=7), "from_position"),
}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_cut_mid_stream_resumes_after_the_last_event(
    store: ScriptedStore, grpc_addr: str, read: str
) -> None:
    call, start_field = READS[read]
    log = stream_log()
    store.on("Read", log.read)
    with client(grpc_addr) as c:
        whole: list[RecordedEvent] = list(call(c))
        store.reset()
        store.on("Read", cut_after(1, log.read), log.read)
        got: list[RecordedEvent] = list(call(c))
    assert [e.event_id for e in got] == [e.event_id for e in whole]  # no repeat, no gap
    first, retry = store.requests("Read")
    delivered = whole[2]  # the last event of the first page (3 a page)
    key = "revision" if start_field == "from_revision" else "position"
    step = -1 if first.direction == pb.DIRECTION_BACKWARDS else 1
    assert retry.WhichOneof("start") == start_field
    assert getattr(retry, start_field) == getattr(delivered, key) + step
    assert retry.max_count == (first.max_count - 3 if first.max_count else 0)
    assert (retry.stream, retry.direction) == (first.stream, first.direction)


def test_a_read_cut_before_its_first_page_is_sent_again_unchanged(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = stream_log()
    store.on("Read", cut_after(0, log.read), log.read)
    with client(grpc_addr) as c:
        got = c.read_stream("s", backwards=True, max_count=4)
    assert [e.revision for e in got] == [7, 6, 5, 4]
    first, retry = store.requests("Read")
    assert retry == first


def test_a_read_cut_after_its_last_event_does_not_ask_again(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = stream_log()
    store.on("Read", cut_after(3, log.read), log.read)  # 8 events: pages of 3, 3, 2
    with client(grpc_addr) as c:
        got = c.read_stream("s", backwards=True)  # revision 0 came: nothing before it
        assert [e.revision for e in got] == list(range(7, -1, -1))
        assert len(store.requests("Read")) == 1
        store.reset()
        store.on("Read", cut_after(1, log.read), log.read)
        assert [e.revision for e in c.read_stream("s", max_count=3)] == [0, 1, 2]
        assert len(store.requests("Read")) == 1  # max_count reached
