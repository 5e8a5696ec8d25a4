"""The outbox: a durable local queue of appends made while the daemon is unreachable.

The client puts an append here when the daemon cannot be reached, tells the
caller it is queued, and later flushes the entries in ``seq`` order, removing
each one once the daemon has it (or reports it was already recorded: the
event ids are kept exactly, which is what makes the flush idempotent). What
happens to an entry the daemon refuses depends only on the error's failure
class (SPEC §4), decided by :func:`flush_action`: human intervention moves it
to the dead letters; recoverable and restart-required leave it queued.

On-disk format, version 1: one LMDB environment in the directory the caller
names, opened ``sync=True, metasync=True`` (an entry the caller was told is
queued survives a crash: ``enqueue`` returns after the commit's fsync).

=========  =====================  ==================================================
database   key                    value
=========  =====================  ==================================================
``queue``  seq (u64 big-endian)   entry, JSON
``dead``   seq (u64 big-endian)   ``{"entry": <entry>, "reason": str, "failed_at": float}``
``meta``   ``b"format"``          ``b"1"``
           ``b"next_seq"``        the next seq (u64 BE): seqs are never reused, even
                                  after the queue empties and the outbox is reopened
=========  =====================  ==================================================

An entry is ``{"stream": str, "expected": "any" | "no_stream" |
"stream_exists" | int, "queued_at": float, "events": [{"event_id",
"event_type", "data" (base64), "content_type", "metadata"}]}`` -- a
``StreamState`` is stored as its value and an exact revision as a JSON
number, so the two kinds cannot be confused. JSON is written with sorted keys
and ASCII escapes, so it is deterministic and lossless for any ``str``
(floats round-trip exactly through ``repr``).

Every LMDB call goes through ``_txn()``, the one place where driver errors
become the client's: a full map is ``Overloaded`` (reason ``OUTBOX_FULL``;
it clears as the outbox flushes), anything else a ``StoreError`` (reason
``OUTBOX_IO``). One lock serializes the callers. Using a closed outbox
raises ValueError, as does opening a directory already open in this process.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import lmdb

from lighthouse_client._dir_claims import claim_dir, release_dir
from lighthouse_client._types import ExpectedRevision, NewEvent, StreamState
from lighthouse_client.exceptions import FailureClass, Overloaded, StoreError

__all__ = ["DeadLetter", "FlushAction", "Outbox", "OutboxEntry", "flush_action"]

FORMAT_VERSION = b"1"
_U64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    stream: str
    expected: ExpectedRevision
    events: tuple[NewEvent, ...]
    queued_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry: OutboxEntry
    reason: str
    failed_at: float


class FlushAction(Enum):
    """What a flush does with an entry the daemon refused."""

    # Human intervention: retrying cannot help. The entry moves to the dead
    # letters and to ``on_conflict``; the flush goes on with the next one.
    DEAD_LETTER = "dead_letter"
    # Recoverable: the daemon cannot take it yet. It stays queued, the flush
    # stops there (order), and new appends queue behind it.
    WAIT = "wait"
    # Restart required: the node is broken. It stays queued, the flush stops
    # there, and new appends raise the error instead of queueing behind it.
    FAIL = "fail"


_FLUSH_ACTIONS: dict[FailureClass, FlushAction] = {
    FailureClass.HUMAN_INTERVENTION: FlushAction.DEAD_LETTER,
    FailureClass.RECOVERABLE: FlushAction.WAIT,
    FailureClass.RESTART_REQUIRED: FlushAction.FAIL,
}


def flush_action(error: StoreError) -> FlushAction:
    """The action for an outbox entry that failed with ``error``, from its
    failure class (which the daemon's error details may set per instance)."""
    return _FLUSH_ACTIONS[error.failure_class]


def _entry_json(e: OutboxEntry) -> dict[str, Any]:
    expected = e.expected.value if isinstance(e.expected, StreamState) else e.expected
    events = [
        {
            "event_id": ev.event_id,
            "event_type": ev.event_type,
            "data": base64.b64encode(ev.data).decode("ascii"),
            "content_type": ev.content_type,
            "metadata": dict(ev.metadata),
        }
        for ev in e.events
    ]
    return {"stream": e.stream, "expected": expected, "events": events, "queued_at": e.queued_at}


def _entry_from(seq: int, d: dict[str, Any]) -> OutboxEntry:
    raw = d["expected"]
    expected: ExpectedRevision = StreamState(raw) if isinstance(raw, str) else int(raw)
    events = tuple(
        NewEvent(
            event_type=ev["event_type"],
            data=base64.b64decode(ev["data"], validate=True),
            content_type=ev["content_type"],
            metadata=ev["metadata"],
            event_id=ev["event_id"],
        )
        for ev in d["events"]
    )
    return OutboxEntry(seq, d["stream"], expected, events, float(d["queued_at"]))


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


class Outbox:
    def __init__(
        self,
        path: Path | str,
        clock: Callable[[], float] = time.time,
        *,
        map_size: int = 1 << 30,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._path = Path(path)
        self._key = claim_dir(self._path, "Outbox")
        self._env: Any = None
        try:
            self._path.mkdir(parents=True, exist_ok=True)
            self._env = lmdb.open(
                str(self._path), map_size=map_size, max_dbs=3, sync=True, metasync=True
            )
            self._env.reader_check()
            with self._txn(write=True) as txn:
                self._queue = self._env.open_db(b"queue", txn=txn)
                self._dead = self._env.open_db(b"dead", txn=txn)
                self._meta = self._env.open_db(b"meta", txn=txn)
                fmt = txn.get(b"format", db=self._meta)
                if fmt is None:
                    txn.put(b"format", FORMAT_VERSION, db=self._meta)
                elif fmt != FORMAT_VERSION:
                    raise StoreError(f"unsupported outbox format {fmt!r} in {self._path}")
        except BaseException:
            self._release()
            raise

    @contextmanager
    def _txn(self, write: bool = False) -> Iterator[Any]:
        if self._env is None:
            raise ValueError("the outbox is closed")
        try:
            with self._env.begin(write=write) as txn:
                yield txn
        except lmdb.MapFullError:
            raise Overloaded(
                f"the outbox in {self._path} is full (LMDB map size)", reason="OUTBOX_FULL"
            ) from None
        except lmdb.Error as exc:
            raise StoreError(f"outbox in {self._path}: {exc}", reason="OUTBOX_IO") from exc

    def enqueue(
        self, stream: str, expected: ExpectedRevision, events: Sequence[NewEvent]
    ) -> OutboxEntry:
        """Store one append durably; returns once it is fsynced."""
        if isinstance(expected, bool) or not isinstance(expected, int | StreamState):
            raise TypeError("expected must be ANY, NO_STREAM, STREAM_EXISTS or an int")
        if isinstance(expected, int) and expected < 0:
            raise ValueError("an expected revision cannot be negative")
        if not events:
            raise ValueError("an outbox entry needs at least one event")
        with self._lock, self._txn(write=True) as txn:
            raw = txn.get(b"next_seq", db=self._meta)
            seq = _U64.unpack(raw)[0] if raw is not None else 1
            entry = OutboxEntry(seq, stream, expected, tuple(events), self._clock())
            txn.put(_U64.pack(seq), _dumps(_entry_json(entry)), db=self._queue)
            txn.put(b"next_seq", _U64.pack(seq + 1), db=self._meta)
        return entry

    def pending(self) -> list[OutboxEntry]:
        """The queued entries, oldest (lowest seq) first."""
        with self._lock, self._txn() as txn:
            return [
                _entry_from(_U64.unpack(k)[0], json.loads(v)) for k, v in txn.cursor(db=self._queue)
            ]

    def __len__(self) -> int:
        with self._lock, self._txn() as txn:
            return int(txn.stat(self._queue)["entries"])

    def remove(self, seq: int) -> None:
        """Forget an entry the daemon now has; a seq not queued is ignored."""
        with self._lock, self._txn(write=True) as txn:
            txn.delete(_U64.pack(seq), db=self._queue)

    def dead_letter(self, seq: int, reason: str) -> DeadLetter:
        """Move an entry from the queue to the dead letters in one transaction."""
        with self._lock, self._txn(write=True) as txn:
            key = _U64.pack(seq)
            raw = txn.pop(key, db=self._queue)
            if raw is None:
                raise KeyError(seq)
            dead = DeadLetter(_entry_from(seq, json.loads(raw)), reason, self._clock())
            record = {"entry": _entry_json(dead.entry), "reason": reason}
            txn.put(key, _dumps({**record, "failed_at": dead.failed_at}), db=self._dead)
        return dead

    def dead_letters(self) -> list[DeadLetter]:
        """Entries the daemon refused for good, in seq order."""
        with self._lock, self._txn() as txn:
            out = []
            for k, v in txn.cursor(db=self._dead):
                d = json.loads(v)
                entry = _entry_from(_U64.unpack(k)[0], d["entry"])
                out.append(DeadLetter(entry, d["reason"], float(d["failed_at"])))
            return out

    def close(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._key:
            release_dir(self._key)
            self._key = ""
