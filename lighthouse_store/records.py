"""Stored records: encoding, checking, and the protobuf wire pieces around them.

The record format is specified in ``lmdb_format.py`` (a stored record is a
serialized RecordedEvent with a CRC-32 trailer in field 10). Checksums are
computed with zlib-ng's vectorized CRC-32, which gives zlib's values faster
(measured in perf/RESULTS.md); the format does not depend on which library
computes them.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Sequence

from zlib_ng.zlib_ng import crc32

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import corruption

CHECKSUM_TAG = 0x55  # (10 << 3) | 5: field 10, fixed32
TRAILER_LEN = 5

_TAG_METADATA = b"\x2a"  # field 5, length-delimited (one map entry)
_TAG_STREAM = b"\x32"  # field 6, length-delimited
_TAG_REVISION = b"\x38"  # field 7, varint
_TAG_POSITION = b"\x40"  # field 8, varint
_TAG_RECORDED_AT = b"\x4a"  # field 9, length-delimited (Timestamp)
_TAG_EVENTS = b"\x0a"  # field 1 of ReadResponse / EventBatch / GetEventResponse
_TRAILER = struct.Struct("<BI")  # the checksum tag, then the CRC-32 little-endian


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


_SMALL = [bytes((i,)) for i in range(0x80)]  # varints of 0..127
_LOW = [bytes((i | 0x80,)) for i in range(0x80)]  # first byte of a longer varint


def stream_field(stream: str) -> bytes:
    """Field 6 of RecordedEvent; computed once per append."""
    raw = stream.encode()
    return _TAG_STREAM + varint(len(raw)) + raw


def timestamp_field(recorded_at_ns: int) -> bytes:
    """Field 9 of RecordedEvent (a Timestamp); computed once per transaction."""
    seconds, nanos = divmod(recorded_at_ns, 1_000_000_000)
    ts = b"\x08" + varint(seconds) + b"\x10" + varint(nanos)
    return _TAG_RECORDED_AT + varint(len(ts)) + ts


def encode_records(
    proposed: Sequence[bytes],
    stream_fld: bytes,
    first_revision: int,
    first_position: int,
    ts_field: bytes,
) -> list[bytes]:
    """The stored records of consecutive events of one stream: event ``i`` gets
    revision ``first_revision + i`` and position ``first_position + i``.

    This is the write path's per-event loop, so it is written for few Python
    steps per event: the varints come from :func:`consecutive_varints`, and
    each record is two joins and two CRC calls (the tail's join is small, so
    no event-sized buffer is made only to be thrown away)."""
    n = len(proposed)
    join, trailer = b"".join, _TRAILER.pack
    tails = [
        join((stream_fld, _TAG_REVISION, rev, _TAG_POSITION, pos, ts_field))
        for rev, pos in zip(
            consecutive_varints(first_revision, n),
            consecutive_varints(first_position, n),
            strict=True,
        )
    ]
    return [
        join((p, tail, trailer(CHECKSUM_TAG, crc32(tail, crc32(p)))))
        for p, tail in zip(proposed, tails, strict=True)
    ]


def consecutive_varints(first: int, n: int) -> list[bytes]:
    """``[varint(first), ..., varint(first + n - 1)]``, computed a run at a time:
    numbers that differ only in their low 7 bits share every varint byte but
    the first, so each run of up to 128 costs one :func:`varint` call."""
    out: list[bytes] = []
    x, end = first, first + n
    while x < end:
        if x < 0x80:
            stop = min(end, 0x80)
            out += _SMALL[x:stop]
        else:
            stop = min(end, (x | 0x7F) + 1)
            high = varint(x >> 7)
            out += [low + high for low in _LOW[x & 0x7F : ((stop - 1) & 0x7F) + 1]]
        x = stop
    return out


def checked(record: bytes, position: int) -> bytes:
    """``record``, once its checksum holds; else raise Corruption (reported).
    On every read from disk, so the test is written out here, not a call."""
    if (
        len(record) < TRAILER_LEN
        or record[-TRAILER_LEN] != CHECKSUM_TAG
        or crc32(memoryview(record)[:-TRAILER_LEN]) != int.from_bytes(record[-4:], "little")
    ):
        raise corruption.found(corruption.CHECKSUM, position, checksum_failed(position))
    return record


def checksum_failed(position: int) -> str:
    return f"stored event at position {position} failed its checksum"


def checksum_ok(record: bytes) -> bool:
    """Whether a stored record's trailer holds the CRC-32 of its body."""
    return (
        len(record) >= TRAILER_LEN
        and record[-TRAILER_LEN] == CHECKSUM_TAG
        and crc32(memoryview(record)[:-TRAILER_LEN]) == int.from_bytes(record[-4:], "little")
    )


def decode(record: bytes) -> pb.RecordedEvent:
    """Parse a stored record (after :func:`checked`)."""
    return pb.RecordedEvent.FromString(record)


def event_id_bytes(event: pb.RecordedEvent) -> bytes:
    """The 16 bytes of a decoded event's id (the ``event_ids`` key); ValueError
    if it is not a UUID."""
    return uuid.UUID(event.event_id).bytes


def recorded_at_ns(event: pb.RecordedEvent) -> int:
    return event.recorded_at.seconds * 1_000_000_000 + event.recorded_at.nanos


# Metadata that says where an event came from, not what it is: a retry of an
# append carries another trace's context (the daemon may add one, tracing.py).
_NOT_CONTENT = "traceparent"


def same_content(stored: pb.RecordedEvent, proposed: bytes) -> bool:
    """Whether a stored event has the content of a proposed one (idempotency):
    the same type, data, content type and metadata but ``traceparent``."""
    new = pb.RecordedEvent.FromString(proposed)
    return (
        stored.event_type == new.event_type
        and stored.data == new.data
        and stored.content_type == new.content_type
        and _content_metadata(stored) == _content_metadata(new)
    )


def _content_metadata(event: pb.RecordedEvent) -> dict[str, str]:
    metadata = dict(event.metadata)
    metadata.pop(_NOT_CONTENT, None)
    return metadata


def metadata_entry(key: str, value: str) -> bytes:
    """One ``map<string, string> metadata = 5`` entry of a ProposedEvent or
    RecordedEvent: appended to an event's bytes, it adds ``key`` to the map."""
    k, v = key.encode(), value.encode()
    entry = b"".join((b"\x0a", varint(len(k)), k, b"\x12", varint(len(v)), v))
    return _TAG_METADATA + varint(len(entry)) + entry


def repeated_events(records: Iterable[bytes]) -> bytes:
    """Encode records as ``repeated RecordedEvent events = 1`` (a ReadResponse,
    EventBatch or GetEventResponse body)."""
    return b"".join([b for r in records for b in (_TAG_EVENTS, varint(len(r)), r)])
