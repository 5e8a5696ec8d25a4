"""The stored record format and the protobuf wire pieces built around it.

A stored record *is* a serialized ``lighthouse.store.v1.RecordedEvent``, so a
read sends it to the client without parsing or re-encoding it::

    record = body || 0x55 || crc32(body) as 4 bytes little-endian

``body`` holds fields 1-9 of RecordedEvent: the client's ProposedEvent bytes
(fields 1-5 have the same numbers in both messages, so they are reused as
sent, after the event id was made canonical) followed by stream (6),
revision (7), position (8) and recorded_at (9) encoded here. The trailer is
field 10, ``fixed32 checksum`` (tag 0x55 = field 10, wire type 5). Protobuf
parsers accept fields in any order and an explicit zero, so every record is a
valid RecordedEvent as it stands. The CRC-32 (zlib) covers every byte of the
body; :func:`verify` checks it on every read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from lighthouse_client import pb
from lighthouse_store.errors import Corruption

CHECKSUM_TAG = 0x55  # (10 << 3) | 5: field 10, fixed32
TRAILER_LEN = 5

_TAG_STREAM = b"\x32"  # field 6, length-delimited
_TAG_REVISION = b"\x38"  # field 7, varint
_TAG_POSITION = b"\x40"  # field 8, varint
_TAG_RECORDED_AT = b"\x4a"  # field 9, length-delimited (Timestamp)
_TAG_EVENTS = b"\x0a"
_CHECKSUM_TAG = bytes((CHECKSUM_TAG,))  # field 1 of ReadResponse / EventBatch / GetEventResponse


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (unrolled up to 4 bytes:
    revisions and positions below 2**28 take no loop)."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def stream_field(stream: str) -> bytes:
    """Field 6 of RecordedEvent; computed once per append."""
    raw = stream.encode()
    return _TAG_STREAM + varint(len(raw)) + raw


def timestamp_field(recorded_at_ns: int) -> bytes:
    """Field 9 of RecordedEvent (a Timestamp); computed once per transaction."""
    seconds, nanos = divmod(recorded_at_ns, 1_000_000_000)
    ts = b"\x08" + varint(seconds) + b"\x10" + varint(nanos)
    return _TAG_RECORDED_AT + varint(len(ts)) + ts


def encode_record(
    proposed: bytes, stream_fld: bytes, revision: int, position: int, ts_field: bytes
) -> bytes:
    """Build a stored record from a ProposedEvent's bytes and what the store assigns."""
    tail = b"".join(
        (stream_fld, _TAG_REVISION, varint(revision), _TAG_POSITION, varint(position), ts_field)
    )
    crc = zlib.crc32(tail, zlib.crc32(proposed))
    return b"".join((proposed, tail, _CHECKSUM_TAG, crc.to_bytes(4, "little")))


def verify(record: bytes, position: int) -> bytes:
    """Return ``record`` if its checksum holds, else raise Corruption."""
    if (
        len(record) < TRAILER_LEN
        or record[-TRAILER_LEN] != CHECKSUM_TAG
        or zlib.crc32(memoryview(record)[:-TRAILER_LEN]) != int.from_bytes(record[-4:], "little")
    ):
        raise Corruption(f"stored event at position {position} failed its checksum", position)
    return record


def decode(record: bytes) -> pb.RecordedEvent:
    """Parse a stored record (after :func:`verify`)."""
    return pb.RecordedEvent.FromString(record)


def recorded_at_ns(event: pb.RecordedEvent) -> int:
    return event.recorded_at.seconds * 1_000_000_000 + event.recorded_at.nanos


def same_content(stored: pb.RecordedEvent, proposed: bytes) -> bool:
    """Whether a stored event has the content of a proposed one (idempotency)."""
    new = pb.RecordedEvent.FromString(proposed)
    return (
        stored.event_type == new.event_type
        and stored.data == new.data
        and stored.content_type == new.content_type
        and dict(stored.metadata) == dict(new.metadata)
    )


def repeated_events(records: Iterable[bytes]) -> bytes:
    """Encode records as ``repeated RecordedEvent events = 1`` (a ReadResponse,
    EventBatch or GetEventResponse body)."""
    return b"".join([b for r in records for b in (_TAG_EVENTS, varint(len(r)), r)])
