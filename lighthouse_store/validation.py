"""Request validation: protobuf requests in, domain commands out.

Pure functions, no I/O: every bad input becomes an :class:`InvalidArgument`
whose message names the field, before anything is queued or written.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import wire_schemas
from lighthouse_store.config import Limits
from lighthouse_store.errors import InvalidArgument
from lighthouse_store.store import AppendCommand, Expected, ExpectedKind, ReadQuery

ALL = "$all"
_STREAM_RE = re.compile(r"[A-Za-z0-9_.:@\-]{1,255}\Z")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
# C0, DEL and C1 (U+0080-U+009F): Unicode's control characters (category Cc).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MAX_NAME = 255
_NIL = bytes(16)


def stream_name(name: str, field: str = "stream", *, writable: bool = True) -> str:
    """A valid stream name; names starting with '$' are store-reserved for writes."""
    if writable and name.startswith("$"):
        raise InvalidArgument(f"{field}: names starting with '$' are reserved for the store")
    body = name[1:] if name.startswith("$") else name
    if not name:
        raise InvalidArgument(f"{field}: must not be empty")
    if not _STREAM_RE.match(body) or len(name) > _MAX_NAME or name in (".", ".."):
        raise InvalidArgument(
            f"{field}: must be 1-255 characters of [A-Za-z0-9_.:@-] and not '.' or '..'"
        )
    return name


def event_id(text: str, field: str = "event_id") -> tuple[bytes, str]:
    """(16 raw bytes, canonical lowercase text) of a UUID in 8-4-4-4-12 form."""
    if not text:
        raise InvalidArgument(f"{field}: is required (a UUID; the client library makes one)")
    if not _UUID_RE.match(text):
        raise InvalidArgument(f"{field}: must be a UUID in canonical 8-4-4-4-12 hex form")
    raw = bytes.fromhex(text.replace("-", ""))
    if raw == _NIL:
        raise InvalidArgument(f"{field}: must not be the nil UUID")
    return raw, text.lower()


def _label(field: str, text: str) -> None:
    """Check an event or content type."""
    if not text:
        raise InvalidArgument(f"{field}: must not be empty")
    if len(text) > _MAX_NAME:
        raise InvalidArgument(f"{field}: must be at most {_MAX_NAME} characters")
    if _CONTROL_RE.search(text):
        raise InvalidArgument(f"{field}: must not contain control characters")


# Appends up to this size (as received) are checked through the wire schemas, whole-
# request copies that are cheap while each stays below glibc's mmap threshold
# (128 KiB by default); bigger ones event by event, where fresh memory for each
# copy would cost more than Python steps per event (``perf/validate_bench.py``).
WIRE_SCHEMA_MAX_BYTES = 128 * 1024


def append_command(req: pb.AppendRequest, limits: Limits, wire_size: int = 0) -> AppendCommand:
    """A validated append, from a parsed request (``wire_size``: its size as
    received, which picks how it is checked; 0 for small)."""
    stream = stream_name(req.stream)
    expected = _expected(req)
    # Fields this server does not know are dropped, not stored: a stored record
    # is the event's bytes plus the store's own fields (records.py), and it must
    # hold nothing a client made up (RecordedEvent's fields 6-10 among them).
    req.DiscardUnknownFields()
    events = req.events
    n = len(events)
    if n == 0:
        raise InvalidArgument("events: an append needs at least one event")
    if n > limits.max_events_per_append:
        raise InvalidArgument(
            f"events: {n} events is more than the limit of {limits.max_events_per_append}"
        )
    checked = _checked_at_once(req, n, limits, wire_size)
    ids, proposed = checked or _checked_one_by_one(events, limits)
    total = sum(map(len, proposed))
    if total > limits.max_append_bytes:
        raise InvalidArgument(
            f"events: {total} bytes is more than the limit of {limits.max_append_bytes} per append"
        )
    return AppendCommand(stream, expected, tuple(ids), tuple(proposed), total)


# The head of a canonical ProposedEvent: field 1 (tag 0x0a), length 36 ("$"),
# a canonical lowercase UUID. The heads of a whole append are checked with one
# match over their concatenation: each is exactly 38 bytes, so a short one
# would leave the concatenation short of 38 * n.
_UUID = b"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_HEAD = b"\x0a\x24"
_HEAD_LEN = len(_HEAD) + 36
_HEADS_RE = re.compile(b"(?:" + re.escape(_HEAD) + _UUID + b")*\\Z")


def _checked_at_once(
    req: pb.AppendRequest, n: int, limits: Limits, wire_size: int
) -> tuple[list[bytes], list[bytes]] | None:
    """The common case, checked with whole-append steps where it can (all of
    them through the wire schemas, for appends up to WIRE_SCHEMA_MAX_BYTES): canonical
    lowercase ids, each once; labels and metadata checked once per distinct
    combination; data within the limit.
    The events' bytes are what the store keeps: ``req`` has no unknown fields
    left. Returns None if any of that does not hold; the caller then checks
    one event at a time and names what is wrong."""
    # Each labelled item has an event_type, content_type and metadata: the
    # distinct combinations through the wire schemas, else every event.
    labelled: Iterable[Any]
    if wire_size <= WIRE_SCHEMA_MAX_BYTES:
        canonical = req.SerializeToString()
        labelled = wire_schemas.distinct_labels(canonical)
        proposed = wire_schemas.event_bytes(canonical)
    else:
        labelled, proposed = req.events, [e.SerializeToString() for e in req.events]
    if not _labels_ok(labelled, limits):
        return None
    heads = b"".join([p[:_HEAD_LEN] for p in proposed])
    if len(heads) != _HEAD_LEN * n or not _HEADS_RE.match(heads):
        return None
    blob = binascii.unhexlify(heads.replace(_HEAD, b"").replace(b"-", b""))
    ids = [blob[i : i + 16] for i in range(0, 16 * n, 16)]
    distinct = set(ids)
    if len(distinct) != n or _NIL in distinct:
        return None
    if max(map(len, proposed)) > limits.max_event_data_bytes:  # data is in proposed: look closer
        return None
    return ids, proposed


def _labels_ok(labelled: Iterable[Any], limits: Limits) -> bool:
    """Whether every (event_type, content_type) and every metadata map is valid
    (the careful path names what is not, in event order)."""
    kinds = set()
    try:
        for x in labelled:
            if x.metadata:
                _metadata("metadata", x.metadata, limits)
            kinds.add((x.event_type, x.content_type))
        for event_type, content_type in kinds:
            _label("event_type", event_type)
            if content_type:
                _label("content_type", content_type)
    except InvalidArgument:
        return False
    return True


def _checked_one_by_one(
    events: Sequence[pb.ProposedEvent], limits: Limits
) -> tuple[list[bytes], list[bytes]]:
    """Check each event, naming the first bad field; lowercases ids."""
    seen: set[bytes] = set()
    ids: list[bytes] = []
    proposed: list[bytes] = []
    max_data = limits.max_event_data_bytes
    for i, event in enumerate(events):
        text = event.event_id
        raw_id, canonical = event_id(text, f"events[{i}].event_id")
        if raw_id in seen:
            raise InvalidArgument(f"events[{i}].event_id: {canonical} appears twice in this append")
        seen.add(raw_id)
        _label(f"events[{i}].event_type", event.event_type)
        if event.content_type:
            _label(f"events[{i}].content_type", event.content_type)
        if event.metadata:
            _metadata(f"events[{i}].metadata", event.metadata, limits)
        if len(event.data) > max_data:
            raise InvalidArgument(
                f"events[{i}].data: {len(event.data)} bytes is more than the limit of {max_data}"
            )
        if text != canonical:
            event.event_id = canonical
        ids.append(raw_id)
        proposed.append(event.SerializeToString())
    return ids, proposed


def _expected(req: pb.AppendRequest) -> Expected:
    which = req.WhichOneof("expected_revision")
    if which is None or which == "any":
        return Expected(ExpectedKind.ANY)
    if which == "no_stream":
        return Expected(ExpectedKind.NO_STREAM)
    if which == "stream_exists":
        return Expected(ExpectedKind.STREAM_EXISTS)
    return Expected(ExpectedKind.EXACT, req.exact)


def _metadata(field: str, metadata: object, limits: Limits) -> None:
    items = dict(metadata)  # type: ignore[call-overload]
    if len(items) > limits.max_metadata_entries:
        raise InvalidArgument(
            f"{field}: {len(items)} entries is more than the limit of {limits.max_metadata_entries}"
        )
    size = 0
    for key, value in items.items():
        if not key:
            raise InvalidArgument(f"{field}: keys must not be empty")
        size += len(key.encode()) + len(value.encode())
    if size > limits.max_metadata_bytes:
        raise InvalidArgument(
            f"{field}: {size} bytes is more than the limit of {limits.max_metadata_bytes}"
        )


def read_query(req: pb.ReadRequest) -> ReadQuery:
    is_all = req.stream in ("", ALL)
    stream = None if is_all else stream_name(req.stream, writable=False)
    if req.direction not in (
        pb.DIRECTION_UNSPECIFIED,
        pb.DIRECTION_FORWARDS,
        pb.DIRECTION_BACKWARDS,
    ):
        raise InvalidArgument(f"direction: unknown value {req.direction}")
    which = req.WhichOneof("start")
    if which == "from_revision" and is_all:
        raise InvalidArgument("from_revision: applies to stream reads; use from_position for $all")
    if which == "from_position" and not is_all:
        raise InvalidArgument("from_position: applies to $all reads; use from_revision for streams")
    start = None if which is None else int(getattr(req, which))
    f = req.filter
    check_filter(f)
    from_ns = _timestamp("from_time", req.from_time) if req.HasField("from_time") else None
    to_ns = _timestamp("to_time", req.to_time) if req.HasField("to_time") else None
    if from_ns is not None and to_ns is not None and from_ns > to_ns:
        raise InvalidArgument("from_time: must not be after to_time")
    return ReadQuery(
        stream=stream,
        backwards=req.direction == pb.DIRECTION_BACKWARDS,
        start=start,
        max_count=req.max_count,
        stream_prefixes=tuple(f.stream_prefixes),
        streams=frozenset(f.streams),
        event_types=frozenset(f.event_types),
        correlation_id=f.correlation_id,
        from_time_ns=from_ns,
        to_time_ns=to_ns,
    )


# Each entry of a filter is tried against every event a read or subscription
# passes over: 10,000 prefixes made a read of 10,000 events take 21 s of CPU.
MAX_FILTER_ENTRIES = 100


def at_least(field: str, value: int, bound: int) -> None:
    """An option that is 0 (the default) or at least ``bound``."""
    if 0 < value < bound:
        raise InvalidArgument(f"{field}: must be 0 (the default) or at least {bound}, got {value}")


def check_filter(f: pb.EventFilter, field: str = "filter") -> None:
    for name, entries in (("stream_prefixes", f.stream_prefixes), ("streams", f.streams),
                          ("event_types", f.event_types)):  # fmt: skip
        if len(entries) > MAX_FILTER_ENTRIES:
            raise InvalidArgument(f"{field}.{name}: at most {MAX_FILTER_ENTRIES} entries,"
                                  f" got {len(entries)}")  # fmt: skip
    for i, prefix in enumerate(f.stream_prefixes):
        if not prefix:
            raise InvalidArgument(f"{field}.stream_prefixes[{i}]: must not be empty")
    for i, name in enumerate(f.streams):
        stream_name(name, f"{field}.streams[{i}]", writable=False)


_MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the protobuf Timestamp range


def _timestamp(field: str, ts: Timestamp) -> int:
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgument(f"{field}: nanos must be in [0, 999999999]")
    if not -62135596800 <= ts.seconds <= _MAX_SECONDS:
        raise InvalidArgument(f"{field}: seconds out of the Timestamp range")
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)
