"""The storage interface the servicer depends on, and its value types.

An :class:`EventStore` has a handful of methods. ``commit`` is called only by
the group-commit writer (``writer.py``), from one thread at a time; the read
methods may be called from any thread. Every implementation passes the same
contract tests (``tests/test_store_contract.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from lighthouse_store.config import Durability
from lighthouse_store.errors import StoreError


class ExpectedKind(Enum):
    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"
    EXACT = "exact"


@dataclass(frozen=True, slots=True)
class Expected:
    kind: ExpectedKind = ExpectedKind.ANY
    revision: int = 0

    def __str__(self) -> str:
        return str(self.revision) if self.kind is ExpectedKind.EXACT else self.kind.value


class NewEvent(NamedTuple):
    """One validated event, for callers that build an :class:`AppendCommand`
    event by event (:meth:`AppendCommand.of`)."""

    event_id: bytes  # 16 bytes
    proposed: bytes  # serialized ProposedEvent, event id canonical


@dataclass(frozen=True, slots=True)
class AppendCommand:
    """A validated append. Its events are two parallel tuples, not a tuple of
    :class:`NewEvent`: validation builds them a whole append at a time where it can,
    and the store wants them apart (ids for the id index, bytes for the log)."""

    stream: str
    expected: Expected
    event_ids: tuple[bytes, ...]  # 16 bytes each
    proposed: tuple[bytes, ...]  # serialized ProposedEvents, event ids canonical
    size: int  # bytes, for queue and batch accounting

    def __post_init__(self) -> None:
        if len(self.event_ids) != len(self.proposed):
            raise ValueError("an AppendCommand needs one id per event")

    @classmethod
    def of(cls, stream: str, expected: Expected, events: Sequence[NewEvent]) -> AppendCommand:
        return cls(
            stream,
            expected,
            tuple(e.event_id for e in events),
            tuple(e.proposed for e in events),
            sum(len(e.proposed) for e in events),
        )


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_position: int
    last_position: int
    last_revision: int
    duplicate: bool = False  # an idempotent retry: nothing was written


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """A validated Read. ``stream`` None means the global log ($all)."""

    stream: str | None = None
    backwards: bool = False
    start: int | None = None  # revision (stream) or position ($all), inclusive
    max_count: int = 0  # 0 = no limit
    stream_prefixes: tuple[str, ...] = ()
    streams: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    correlation_id: str = ""
    from_time_ns: int | None = None
    to_time_ns: int | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.stream_prefixes or self.streams or self.event_types or self.correlation_id)


@dataclass(frozen=True, slots=True)
class ReadCursor:
    """Where the next page of a read starts; opaque to callers."""

    next_key: int  # revision or position
    stop_key: int  # last key to visit (inclusive), in the read's direction
    remaining: int  # events still wanted; -1 = no limit


@dataclass(frozen=True, slots=True)
class Page:
    records: list[bytes]  # stored records, checksums verified
    cursor: ReadCursor | None  # None: the read is complete
    last_visited_key: int = -1  # position or revision, matched or not; -1: none


class EventStore(ABC):
    """What the daemon needs from storage."""

    @abstractmethod
    def head_position(self) -> int:
        """Position of the last committed event; 0 when empty. Cheap. It is
        published just after a commit becomes visible to readers, so for a
        moment a reader may hold a position past it: before refusing a
        position for being past the head, ask :meth:`last_position`. (With
        several processes committing to one store, it is the last commit
        this process made or heard of, which can be further behind.)"""

    @abstractmethod
    def last_position(self) -> int:
        """Position of the last event in storage, read from storage: never
        behind what a reader can have seen. Slower than head_position()."""

    @property
    @abstractmethod
    def durability(self) -> Durability:
        """What a commit makes sure of before it returns, read from the storage
        as it is set up (GetInfo reports this, not the setting asked for)."""

    @abstractmethod
    def commit(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None = None
    ) -> list[AppendResult | StoreError]:
        """Apply appends in order, and store consumer checkpoints, in one
        durable transaction.

        Each append succeeds or fails on its own (its result is the error),
        an append too big for the space left included; appends later in the
        list see the ones before them. If the transaction itself fails, raise:
        then nothing of the batch was written.
        """

    def flush_seconds(self) -> float:
        """Of the last :meth:`commit`, the seconds spent writing its transaction
        to disk and flushing it (0 where the store does not tell); asked by
        the writer's thread right after the commit, for its metrics."""
        return 0.0

    @abstractmethod
    def get_checkpoint(self, consumer: str) -> int | None:
        """A named consumer's stored position, or None."""

    @abstractmethod
    def read_page(
        self,
        query: ReadQuery,
        cursor: ReadCursor | None,
        max_events: int,
        max_bytes: int,
        max_scan: int = 0,
    ) -> Page:
        """One page of a read; ``cursor`` None starts it. Raises StreamNotFound.

        A filtered read visits at most ``max_scan`` records per page (0: an
        implementation default), so a page comes back soon even when little
        matches; ``Page.last_visited_key`` says how far it got.
        """

    @abstractmethod
    def get_event(self, event_id: bytes) -> bytes | None:
        """The stored record of an event, or None."""

    @abstractmethod
    def close(self) -> None:
        """Release the storage; no method may be called after."""
