"""Append: round trip, expected revisions, idempotency, id conflicts, atomicity."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from support import (
    FULL_MAP_ARGS,
    DaemonFactory,
    Expected,
    append,
    append_request,
    assert_clean_message,
    assert_matches,
    error_info,
    events,
    expect_code,
    get_event,
    head,
    new_event,
    positions,
    read_all,
    read_stream,
    revisions,
    rpc_error,
    ts_ns,
    uuid7,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

FP = grpc.StatusCode.FAILED_PRECONDITION


def test_round_trip_all_fields(stub: Any) -> None:
    assert head(stub) == 0
    sent = [
        new_event(
            "OrderPlaced",
            b'{"order": 1}',
            content_type="application/json",
            metadata={
                "correlation_id": "corr-1",
                "causation_id": "cause-1",
                "source": "tests",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            },
        ),
        new_event("Blob", bytes(range(256)) * 4, content_type="application/octet-stream"),
        new_event("Empty", b"", content_type="", metadata={}),
        new_event("Seven", b"\x00\xff", event_id=uuid7()),
    ]
    before_ns = time.time_ns()
    resp = append(stub, "orders-1", sent, "no_stream")
    after_ns = time.time_ns()
    assert (resp.first_position, resp.last_position, resp.last_revision) == (1, 4, 3)
    assert head(stub) == 4

    got = read_stream(stub, "orders-1")
    assert len(got) == 4
    for i, (rec, ev) in enumerate(zip(got, sent, strict=True)):
        assert_matches(rec, ev)
        assert rec.stream == "orders-1"
        assert rec.revision == i
        assert rec.position == i + 1
        assert rec.HasField("recorded_at")
        # Same machine, same clock: recorded in the write transaction.
        assert before_ns - 1_000_000_000 <= ts_ns(rec.recorded_at) <= after_ns + 1_000_000_000
        assert rec.checksum != 0
        # GetEvent returns the identical record.
        assert get_event(stub, ev.event_id) == rec
    # And $all holds the same records.
    assert read_all(stub) == got


def test_positions_global_revisions_per_stream(stub: Any) -> None:
    r1 = append(stub, "a", events(2))
    r2 = append(stub, "b", events(3))
    r3 = append(stub, "a", events(1))
    assert (r1.first_position, r1.last_position, r1.last_revision) == (1, 2, 1)
    assert (r2.first_position, r2.last_position, r2.last_revision) == (3, 5, 2)
    assert (r3.first_position, r3.last_position, r3.last_revision) == (6, 6, 2)
    assert positions(read_stream(stub, "a")) == [1, 2, 6]
    assert revisions(read_stream(stub, "a")) == [0, 1, 2]
    assert revisions(read_stream(stub, "b")) == [0, 1, 2]
    assert positions(read_all(stub)) == [1, 2, 3, 4, 5, 6]
    assert head(stub) == 6


# -- expected revision ---------------------------------------------------


@pytest.mark.parametrize("expected", [None, "any", "no_stream"])
def test_expected_ok_on_new_stream(stub: Any, expected: Expected) -> None:
    resp = append(stub, "fresh", events(2), expected)
    assert (resp.first_position, resp.last_position, resp.last_revision) == (1, 2, 1)


@pytest.mark.parametrize("expected", [None, "any", "stream_exists", 2])
def test_expected_ok_on_existing_stream(stub: Any, expected: Expected) -> None:
    append(stub, "s", events(3))
    resp = append(stub, "s", events(1), expected)
    assert (resp.first_position, resp.last_position, resp.last_revision) == (4, 4, 3)
    assert revisions(read_stream(stub, "s")) == [0, 1, 2, 3]


def _wrong_expected(
    daemon: DaemonProcess, stub: Any, stream: str, expected: Expected
) -> dict[str, str]:
    before = head(stub)
    err = expect_code(FP, stub.Append, append_request(stream, events(2), expected))
    assert_clean_message(err, daemon.data_dir)
    ei = error_info(err)
    assert ei.reason == "WRONG_EXPECTED_REVISION", ei
    md = dict(ei.metadata)
    assert md["failure_class"] == "human_intervention", md
    assert md["stream"] == stream, md
    assert head(stub) == before, "a failed append wrote something"
    return md


def test_no_stream_on_existing_stream_fails(daemon: DaemonProcess, stub: Any) -> None:
    append(stub, "s", events(1))
    md = _wrong_expected(daemon, stub, "s", "no_stream")
    assert md["expected"] == "no_stream"
    assert md["actual"] == "0"
    assert revisions(read_stream(stub, "s")) == [0]


def test_stream_exists_on_new_stream_fails(daemon: DaemonProcess, stub: Any) -> None:
    append(stub, "other", events(1))
    md = _wrong_expected(daemon, stub, "missing", "stream_exists")
    assert md["expected"] == "stream_exists"
    assert md["actual"] == "no_stream"
    expect_code(grpc.StatusCode.NOT_FOUND, stub.Read, pb.ReadRequest(stream="missing"))


def test_exact_wrong_revision_fails(daemon: DaemonProcess, stub: Any) -> None:
    append(stub, "s", events(6))  # revisions 0..5
    md = _wrong_expected(daemon, stub, "s", 3)
    assert md["expected"] == "3"
    assert md["actual"] == "5"
    # Ahead of the stream is wrong too.
    md = _wrong_expected(daemon, stub, "s", 6)
    assert (md["expected"], md["actual"]) == ("6", "5")
    assert revisions(read_stream(stub, "s")) == [0, 1, 2, 3, 4, 5]
    # And the right one still works afterwards.
    assert append(stub, "s", events(1), 5).last_revision == 6


def test_exact_on_new_stream_fails(daemon: DaemonProcess, stub: Any) -> None:
    md = _wrong_expected(daemon, stub, "nothing-here", 0)
    assert md["expected"] == "0"
    assert md["actual"] == "no_stream"
    assert head(stub) == 0


def test_exact_chain(stub: Any) -> None:
    rev = append(stub, "chain", events(1), "no_stream").last_revision
    for _ in range(5):
        rev = append(stub, "chain", events(2), rev).last_revision
    assert rev == 10
    assert revisions(read_stream(stub, "chain")) == list(range(11))


# -- idempotency ---------------------------------------------------------


@pytest.mark.parametrize("expected", [None, "any", "no_stream", 0])
def test_idempotent_retry_returns_original_result(stub: Any, expected: Expected) -> None:
    if expected == 0:
        append(stub, "s", events(1))
    batch = events(3)
    first = append(stub, "s", batch, expected)
    h = head(stub)
    before = read_all(stub)
    for _ in range(3):
        again = append(stub, "s", batch, expected)
        assert again == first
    assert head(stub) == h
    assert read_all(stub) == before


def test_idempotent_retry_after_stream_moved_on(stub: Any) -> None:
    batch = events(2)
    first = append(stub, "s", batch, "no_stream")
    append(stub, "s", events(3))
    append(stub, "other", events(1))
    h = head(stub)
    # A client retrying after a lost reply sends the very same request.
    assert append(stub, "s", batch, "no_stream") == first
    assert append(stub, "s", batch) == first
    assert head(stub) == h
    assert revisions(read_stream(stub, "s")) == [0, 1, 2, 3, 4]


def test_idempotent_single_event(stub: Any) -> None:
    ev = new_event("One", b"1")
    first = append(stub, "single", ev)
    append(stub, "single", events(1))
    assert append(stub, "single", ev) == first
    assert head(stub) == 2


def test_reordered_retry_is_not_idempotent(stub: Any) -> None:
    a, b = new_event("A"), new_event("B")
    append(stub, "s", [a, b])
    h = head(stub)
    err = rpc_error(stub.Append, append_request("s", [b, a]))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert head(stub) == h
    assert [e.event_type for e in read_stream(stub, "s")] == ["A", "B"]


@pytest.mark.parametrize(
    "change",
    ["data", "event_type", "content_type", "metadata"],
)
def test_event_id_reuse_with_other_content(daemon: DaemonProcess, stub: Any, change: str) -> None:
    original = new_event("T", b"one", metadata={"k": "v"})
    append(stub, "s", original)
    other = pb.ProposedEvent()
    other.CopyFrom(original)
    if change == "data":
        other.data = b"two"
    elif change == "event_type":
        other.event_type = "U"
    elif change == "content_type":
        other.content_type = "text/plain"
    else:
        other.metadata["k"] = "w"
    h = head(stub)
    err = expect_code(grpc.StatusCode.ALREADY_EXISTS, stub.Append, append_request("s", [other]))
    assert_clean_message(err, daemon.data_dir)
    ei = error_info(err)
    assert ei.reason == "EVENT_ID_CONFLICT", ei
    assert head(stub) == h
    assert get_event(stub, original.event_id).data == b"one"


def test_event_id_reuse_in_another_stream(daemon: DaemonProcess, stub: Any) -> None:
    ev = new_event("T", b"x")
    append(stub, "first", ev)
    err = expect_code(grpc.StatusCode.ALREADY_EXISTS, stub.Append, append_request("second", [ev]))
    assert error_info(err).reason == "EVENT_ID_CONFLICT"
    assert head(stub) == 1
    expect_code(grpc.StatusCode.NOT_FOUND, stub.Read, pb.ReadRequest(stream="second"))
    assert get_event(stub, ev.event_id).stream == "first"


def test_event_id_reuse_inside_larger_batch_writes_nothing(stub: Any) -> None:
    old = new_event("T", b"old")
    append(stub, "first", old)
    clash = pb.ProposedEvent()
    clash.CopyFrom(old)
    clash.data = b"new"
    batch = [new_event(), new_event(), clash, new_event()]
    expect_code(grpc.StatusCode.ALREADY_EXISTS, stub.Append, append_request("second", batch))
    assert head(stub) == 1
    expect_code(grpc.StatusCode.NOT_FOUND, stub.Read, pb.ReadRequest(stream="second"))
    for ev in batch[:2] + batch[3:]:
        expect_code(
            grpc.StatusCode.NOT_FOUND, stub.GetEvent, pb.GetEventRequest(event_id=ev.event_id)
        )


def test_partial_resend_with_new_events_is_rejected_atomically(stub: Any) -> None:
    """An id recorded in stream s, re-sent with a new one to stream t."""
    a = new_event("A")
    append(stub, "s", a)
    b = new_event("B")
    h = head(stub)
    expect_code(grpc.StatusCode.ALREADY_EXISTS, stub.Append, append_request("t", [a, b]))
    assert head(stub) == h
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent, pb.GetEventRequest(event_id=b.event_id))


# -- atomicity -----------------------------------------------------------


def test_batch_with_one_invalid_event_writes_nothing(daemon: DaemonProcess, stub: Any) -> None:
    append(stub, "other", events(2))
    batch = events(3)
    batch[1].event_id = "not-a-uuid"
    err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Append, append_request("s", batch))
    assert "events[1].event_id" in (err.details() or "")
    assert head(stub) == 2
    expect_code(grpc.StatusCode.NOT_FOUND, stub.Read, pb.ReadRequest(stream="s"))
    for ev in (batch[0], batch[2]):
        expect_code(
            grpc.StatusCode.NOT_FOUND, stub.GetEvent, pb.GetEventRequest(event_id=ev.event_id)
        )
    # The good events can be appended afterwards (their ids were not burnt).
    batch[1].event_id = new_event().event_id
    assert append(stub, "s", batch).first_position == 3


def test_batch_with_bad_last_event_type_writes_nothing(stub: Any) -> None:
    batch = events(5)
    batch[4].event_type = ""
    err = expect_code(grpc.StatusCode.INVALID_ARGUMENT, stub.Append, append_request("s", batch))
    assert "events[4]" in (err.details() or "")
    assert head(stub) == 0


def test_get_event_unknown_is_not_found(daemon: DaemonProcess, stub: Any) -> None:
    append(stub, "s", events(1))
    err = expect_code(
        grpc.StatusCode.NOT_FOUND, stub.GetEvent, pb.GetEventRequest(event_id=new_event().event_id)
    )
    assert_clean_message(err, daemon.data_dir)
    assert error_info(err).metadata["failure_class"] in ("human_intervention", "recoverable")


def test_unknown_fields_in_an_event_are_dropped_not_stored(daemon: DaemonProcess) -> None:
    """A ProposedEvent carrying fields it does not have (here RecordedEvent's
    revision, position and stream numbers, and a field 100) is stored as the
    event alone: the record holds the store's own values and nothing more."""
    sent = new_event("Forged", b"payload")
    extra = b"\x38\x63" + b"\x40\x63" + b"\x32\x04evil" + b"\xa0\x06\x01"  # fields 7, 8, 6, 100
    forged = sent.SerializeToString() + extra
    request = pb.AppendRequest(stream="clean").SerializeToString()
    request += b"\x32" + bytes([len(forged)]) + forged  # events = 6
    assert pb.AppendRequest.FromString(request).events[0].event_id == sent.event_id
    call = daemon.channel().unary_unary(
        "/lighthouse.store.v1.EventStoreService/Append", _registered_method=True
    )
    pb.AppendResponse.FromString(call(request, timeout=10))
    read = daemon.channel().unary_stream(
        "/lighthouse.store.v1.EventStoreService/Read", _registered_method=True
    )
    pages = list(read(pb.ReadRequest(stream="clean").SerializeToString(), timeout=10))
    assert not any(b"evil" in page for page in pages)  # the forged stream field is gone
    (record,) = [e for page in pages for e in pb.ReadResponse.FromString(page).events]
    assert (record.stream, record.revision, record.position) == ("clean", 0, 1)
    clean = pb.RecordedEvent()
    clean.CopyFrom(record)
    clean.DiscardUnknownFields()
    assert clean.ByteSize() == record.ByteSize()
    assert_matches(record, sent)


def test_a_full_store_refuses_the_append_that_does_not_fit_and_stays_up(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(extra_args=FULL_MAP_ARGS)
    stub = d.stub()
    append(stub, "s", events(3))
    big = events(500, data=b"x" * 8000)  # 4 MB: more than the map holds
    err = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, append, stub, "s", big)
    meta = error_info(err).metadata
    assert error_info(err).reason == "STORAGE_FULL"
    assert meta["failure_class"] == "recoverable"  # once the limit is raised
    assert "--max-map-size" in (err.details() or "")
    # Nothing of it was written; smaller appends and reads go on.
    assert head(stub) == 3
    assert append(stub, "s", events(1)).first_position == 4
    assert [e.position for e in read_all(stub)] == [1, 2, 3, 4]
