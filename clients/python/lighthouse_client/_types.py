"""The values users see: frozen dataclasses, never protobuf types."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from types import MappingProxyType
from typing import Final

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


@dataclass(frozen=True, slots=True)
class RecordedEvent:
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
