"""The stored record format (records.py): pure logic, no daemon."""

from __future__ import annotations

import uuid
import zlib

import pytest

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import records
from lighthouse_store.errors import Corruption


def _record(revision: int = 3, position: int = 42, ts: int = 1_795_000_000_123_456_789) -> bytes:
    proposed = pb.ProposedEvent(
        event_id=str(uuid.uuid4()),
        event_type="OrderPlaced",
        data=b"\x00\x01payload",
        content_type="application/octet-stream",
        metadata={"correlation_id": "c-1", "source": "tests"},
    ).SerializeToString()
    stream, stamp = records.stream_field("orders-1"), records.timestamp_field(ts)
    return records.encode_records([proposed], stream, revision, position, stamp)[0]


def test_a_record_parses_as_a_recorded_event_with_every_field() -> None:
    event = pb.RecordedEvent.FromString(_record())
    assert event.event_type == "OrderPlaced"
    assert event.data == b"\x00\x01payload"
    assert event.metadata["correlation_id"] == "c-1"
    assert (event.stream, event.revision, event.position) == ("orders-1", 3, 42)
    assert records.recorded_at_ns(event) == 1_795_000_000_123_456_789
    assert event.checksum != 0


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        127,
        128,
        300,
        2**14 - 1,
        2**14,
        2**21 - 1,
        2**21,
        2**28 - 1,
        2**28,
        2**32,
        2**63 - 1,
        2**64 - 1,
    ],
)
def test_varint_matches_protobuf(value: int) -> None:
    encoded = pb.AppendResponse(last_position=value).SerializeToString()
    expected = encoded[1:] if value else b"\x00"
    assert records.varint(value) == expected


def test_zero_revision_and_position_round_trip() -> None:
    event = pb.RecordedEvent.FromString(_record(revision=0, position=1, ts=0))
    assert (event.revision, event.position, records.recorded_at_ns(event)) == (0, 1, 0)


def test_checked_returns_an_intact_record() -> None:
    rec = _record()
    assert records.checked(rec, 42) is rec


@pytest.mark.parametrize("index", [0, 10, -20, -6, -5, -1])
def test_checked_rejects_any_flipped_byte(index: int) -> None:
    rec = bytearray(_record())
    rec[index] ^= 0x40
    with pytest.raises(Corruption) as info:
        records.checked(bytes(rec), 42)
    assert info.value.position == 42
    assert "42" in info.value.message


def test_checked_rejects_a_truncated_record() -> None:
    with pytest.raises(Corruption):
        records.checked(_record()[:-1], 7)


def test_repeated_events_is_a_read_response() -> None:
    recs = [_record(position=p) for p in (1, 2, 3)]
    response = pb.ReadResponse.FromString(records.repeated_events(recs))
    assert [e.position for e in response.events] == [1, 2, 3]
    single = pb.GetEventResponse.FromString(records.repeated_events(recs[:1]))
    assert single.event.position == 1


def test_same_content_compares_the_proposed_fields() -> None:
    proposed = pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="T", data=b"a")
    rec = records.encode_records(
        [proposed.SerializeToString()], records.stream_field("s"), 0, 1, records.timestamp_field(5)
    )[0]
    stored = records.decode(rec)
    assert records.same_content(stored, proposed.SerializeToString())
    proposed.data = b"b"
    assert not records.same_content(stored, proposed.SerializeToString())


def test_same_content_leaves_the_traceparent_out() -> None:
    """A retry carries another trace's context (tracing.py): the same event."""
    proposed = pb.ProposedEvent(
        event_id=str(uuid.uuid4()), event_type="T", metadata={"traceparent": "00-a-b-01", "k": "v"}
    )
    rec = records.encode_records(
        [proposed.SerializeToString()], records.stream_field("s"), 0, 1, records.timestamp_field(5)
    )[0]
    stored = records.decode(rec)
    proposed.metadata["traceparent"] = "00-c-d-01"
    assert records.same_content(stored, proposed.SerializeToString())
    del proposed.metadata["traceparent"]
    assert records.same_content(stored, proposed.SerializeToString())
    proposed.metadata["k"] = "w"
    assert not records.same_content(stored, proposed.SerializeToString())


@pytest.mark.parametrize("value_len", [0, 55, 127, 128, 20_000])
def test_a_metadata_entry_appended_to_an_event_adds_one_key(value_len: int) -> None:
    proposed = pb.ProposedEvent(event_id=str(uuid.uuid4()), data=b"x", metadata={"a": "1"})
    value = "v" * value_len
    event = pb.ProposedEvent.FromString(
        proposed.SerializeToString() + records.metadata_entry("traceparent", value)
    )
    assert dict(event.metadata) == {"a": "1", "traceparent": value}
    assert event.data == b"x"


def test_the_checksum_is_zlibs_crc32_whichever_library_computes_it() -> None:
    """Records written by any version of the store (the first computed the
    checksum with the standard library's zlib) pass the check, and new ones carry the
    same value zlib computes."""
    rec = _record()
    body = rec[: -records.TRAILER_LEN]
    assert int.from_bytes(rec[-4:], "little") == zlib.crc32(body)
    by_zlib = body + bytes((records.CHECKSUM_TAG,)) + zlib.crc32(body).to_bytes(4, "little")
    assert records.checked(by_zlib, 42) == rec


@pytest.mark.parametrize(
    "first", [0, 1, 100, 127, 128, 200, 255, 256, 2**14 - 3, 2**21 - 130, 2**35 + 7, 2**64 - 200]
)
@pytest.mark.parametrize("n", [0, 1, 2, 127, 128, 129, 300])
def test_consecutive_varints_are_the_varints_of_a_range(first: int, n: int) -> None:
    expected = [records.varint(x) for x in range(first, first + n)]
    assert records.consecutive_varints(first, n) == expected


def test_encode_records_numbers_a_run_of_events() -> None:
    events = [
        pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="T", data=bytes([i]))
        for i in range(200)
    ]
    proposed = [e.SerializeToString() for e in events]
    ts = records.timestamp_field(1_795_000_000_000_000_001)
    recs = records.encode_records(proposed, records.stream_field("s-1"), 120, 16_300, ts)
    stored = [records.decode(records.checked(r, 16_300 + i)) for i, r in enumerate(recs)]
    assert [(e.revision, e.position, e.data) for e in stored] == [
        (120 + i, 16_300 + i, bytes([i])) for i in range(200)
    ]
    assert {e.stream for e in stored} == {"s-1"}
