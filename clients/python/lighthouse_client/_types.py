"""The values users see: frozen dataclasses, never protobuf types.

A :class:`RecordedEvent` read from the daemon starts as a reference to its
message in the page it came in (``recorded_events``) and decodes its fields
the first time one of them is read, all at once; from then on it holds plain
values and no longer keeps the page alive. A replay that hands events on
without reading them pays for one small object each, not for ten conversions
and a copy of the metadata (``perf/RESULTS.md``, "Client library cost").
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from lighthouse_proto.limits import Limits as Limits  # GetInfo's limits: the shared type


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562) in canonical text form."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _frozen_map(m: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(m))


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``event_id`` defaults to a fresh UUIDv7, which is
    what makes retried appends safe: the store records an id only once."""

    event_type: str
    data: bytes = b""
    content_type: str = "application/json"
    metadata: Mapping[str, str] = field(default_factory=dict)
    event_id: str = field(default_factory=uuid7)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", _frozen_map(self.metadata))


class _Undecoded:
    """Where a :class:`RecordedEvent` from the daemon keeps its message until
    a field is read: ``_wire[_at]`` (``_wire`` is the page's repeated field)."""

    __slots__ = ("_at", "_wire")


@dataclass(frozen=True, slots=True)
class RecordedEvent(_Undecoded):
    """An event as the store recorded it."""

    event_id: str
    event_type: str
    data: bytes
    content_type: str
    metadata: Mapping[str, str]
    stream: str
    revision: int  # 0-based, per stream
    position: int  # global, from 1
    recorded_at_ns: int  # Unix nanoseconds
    checksum: int

    @property
    def recorded_at(self) -> datetime:
        return datetime.fromtimestamp(self.recorded_at_ns / 1e9, tz=UTC)

    if not TYPE_CHECKING:  # (for mypy, every attribute is a plain field)

        def __getattr__(self, name: str) -> Any:
            # Python calls this only for an attribute not set: a field of an
            # event that has not been decoded yet, or no attribute at all.
            getter = _GETTERS.get(name)
            if getter is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            _decode(self)
            return getter(self)


_GETTERS = {name: getattr(RecordedEvent, name).__get__ for name in RecordedEvent.__slots__}
(
    _set_event_id,
    _set_event_type,
    _set_data,
    _set_content_type,
    _set_metadata,
    _set_stream,
    _set_revision,
    _set_position,
    _set_recorded_at_ns,
    _set_checksum,
) = (getattr(RecordedEvent, name).__set__ for name in RecordedEvent.__slots__)
_get_wire = _Undecoded._wire.__get__  # type: ignore[attr-defined]  # slot descriptors
_set_wire = _Undecoded._wire.__set__  # type: ignore[attr-defined]
_del_wire = _Undecoded._wire.__delete__  # type: ignore[attr-defined]
_get_at = _Undecoded._at.__get__  # type: ignore[attr-defined]
_set_at = _Undecoded._at.__set__  # type: ignore[attr-defined]
_new = object.__new__


def recorded_events(wire: Sequence[Any]) -> list[RecordedEvent]:
    """The events of ``wire`` (``lighthouse.store.v1.RecordedEvent`` messages,
    a page's repeated field), each decoded when one of its fields is first read."""
    events = []
    for i in range(len(wire)):
        event = _new(RecordedEvent)
        _set_wire(event, wire)
        _set_at(event, i)
        events.append(event)
    return events


def _decode(event: RecordedEvent) -> None:
    """Set every field of ``event`` from its message and let go of the page.
    (Unrolled, with the slots' own setters: a third of the time of a loop.)"""
    try:
        wire = _get_wire(event)
    except AttributeError:  # decoded already (by another thread, just now)
        return
    e = wire[_get_at(event)]
    _set_event_id(event, e.event_id)
    _set_event_type(event, e.event_type)
    _set_data(event, e.data)
    _set_content_type(event, e.content_type)
    m = e.metadata
    _set_metadata(event, {k: m[k] for k in m} if m else {})  # (m[missing] would add it)
    _set_stream(event, e.stream)
    _set_revision(event, e.revision)
    _set_position(event, e.position)
    t = e.recorded_at
    _set_recorded_at_ns(event, t.seconds * 1_000_000_000 + t.nanos)
    _set_checksum(event, e.checksum)
    with contextlib.suppress(AttributeError):  # another thread got there first
        _del_wire(event)


class StreamState(Enum):
    """Expected-revision conditions other than an exact revision."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"


ANY: Final = StreamState.ANY
NO_STREAM: Final = StreamState.NO_STREAM
STREAM_EXISTS: Final = StreamState.STREAM_EXISTS

# What append(expected_revision=...) takes: a StreamState or an exact revision.
ExpectedRevision = StreamState | int


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_position: int
    last_position: int
    last_revision: int
    # True when the daemon was unreachable and the append went to the outbox;
    # the positions are then 0 and it is written when the outbox flushes.
    queued: bool = False


@dataclass(frozen=True, slots=True)
class ReadResult(Sequence[RecordedEvent]):
    """The events of a read. ``stale`` means they came from the client's
    cache because the daemon could not be reached: ``fetched_at`` says when
    they were fetched and ``head_position`` is the last head the client saw."""

    events: tuple[RecordedEvent, ...]
    stale: bool = False
    fetched_at: float | None = None  # time.time() of the fetch, for stale results
    head_position: int | None = None

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> RecordedEvent:  # type: ignore[override]
        return self.events[index]

    def __iter__(self) -> Iterator[RecordedEvent]:
        return iter(self.events)


@dataclass(frozen=True, slots=True)
class EventResult:
    """One event by id; ``stale`` as for :class:`ReadResult`."""

    event: RecordedEvent
    stale: bool = False
    fetched_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoreInfo:
    head_position: int
    server_version: str
    durability: str  # "fsync" or "async"
    limits: Limits
    subscriber_count: int


@dataclass(frozen=True, slots=True)
class Filter:
    """Server-side event filter; conditions combine with AND, list items with OR."""

    stream_prefixes: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    correlation_id: str = ""

    def matches(self, event: RecordedEvent) -> bool:
        """The same test the server applies (used for cached reads)."""
        return (
            (not self.stream_prefixes or event.stream.startswith(self.stream_prefixes))
            and (not self.streams or event.stream in self.streams)
            and (not self.event_types or event.event_type in self.event_types)
            and (
                not self.correlation_id
                or event.metadata.get("correlation_id") == self.correlation_id
            )
        )
