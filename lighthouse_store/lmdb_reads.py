"""Reads of the LMDB event store, each inside a read transaction the caller opens.

Every function takes a read transaction and the environment's databases
(``lmdb_format.Databases``) and nothing of the writer, so anything that opens
the environment reads it the same way as the store does.

The store reads each page in its own short read transaction (no long-lived
reader pins old pages while a replay runs). Every record read from the disk
has its checksum checked before it leaves the store; records taken from the
in-memory tail (``recent``) are the exact bytes committed moments ago. A time
window ``[from, to)`` is turned into a key range by binary search, since
``recorded_at`` never decreases along the log or along a stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lighthouse_store import records
from lighthouse_store.errors import Corruption, StreamNotFound
from lighthouse_store.lmdb_format import INDEX_KEY, STREAM_STATE, U64, Databases
from lighthouse_store.store import Page, ReadCursor, ReadQuery

# A filtered page stops after visiting this many records per wanted event, so
# one page never holds a reader thread for long.
SCAN_FACTOR = 16


def last_position(txn: Any, dbs: Databases) -> int:
    cur = txn.cursor(db=dbs.log)
    return int(U64.unpack(cur.key())[0]) if cur.last() else 0


def head(txn: Any, dbs: Databases) -> tuple[int, int]:
    """Position and recorded_at (ns) of the last record, checksum checked;
    (0, 0) for an empty log."""
    cur = txn.cursor(db=dbs.log)
    if not cur.last():
        return 0, 0
    position = U64.unpack(cur.key())[0]
    record = records.checked(cur.value(), position)
    return position, records.recorded_at_ns(records.decode(record))


def checkpoint(txn: Any, dbs: Databases, consumer: str) -> int | None:
    raw = txn.get(consumer.encode(), db=dbs.consumers)
    return None if raw is None else int(U64.unpack(raw)[0])


def event_by_id(txn: Any, dbs: Databases, event_id: bytes) -> bytes | None:
    raw = txn.get(event_id, db=dbs.event_ids)
    if raw is None:
        return None
    position = U64.unpack(raw)[0]
    return records.checked(_log_record(txn, dbs, position), position)


def page(
    txn: Any,
    dbs: Databases,
    recent: Callable[[int], bytes | None],
    query: ReadQuery,
    cursor: ReadCursor | None,
    max_events: int,
    max_bytes: int,
    max_scan: int = 0,
) -> Page:
    """One page of a read (``EventStore.read_page``); ``recent`` looks a
    position up in the in-memory tail."""
    if cursor is None:
        cursor = _start(txn, dbs, query)
        if cursor is None:
            return Page([], None)

    def record_at(position: int, key: bytes) -> bytes:
        record = recent(position)
        if record is None:
            raw = txn.get(key, db=dbs.log)
            if raw is None:
                raise Corruption(f"log has no event at position {position}", position)
            record = records.checked(raw, position)
        return record

    if query.stream is None:

        def fetch(key: int) -> bytes:
            return record_at(key, U64.pack(key))

    else:
        stream_id = _stream_id(txn, dbs, query.stream)
        index = dbs.stream_index

        def fetch(key: int) -> bytes:
            raw = txn.get(INDEX_KEY.pack(stream_id, key), db=index)
            if raw is None:
                raise Corruption(f"stream index entry missing for revision {key}", 0)
            return record_at(U64.unpack(raw)[0], raw)

    scan = max_scan or max_events * SCAN_FACTOR
    return _collect(query, cursor, max_events, max_bytes, scan, fetch)


def _collect(
    query: ReadQuery,
    cursor: ReadCursor,
    max_events: int,
    max_bytes: int,
    budget: int,
    fetch: Callable[[int], bytes],
) -> Page:
    step = -1 if query.backwards else 1
    key, stop, remaining = cursor.next_key, cursor.stop_key, cursor.remaining
    out: list[bytes] = []
    size = 0
    done = False
    while budget > 0 and len(out) < max_events and size < max_bytes:
        if (key > stop) if step > 0 else (key < stop):
            done = True
            break
        record = fetch(key)
        key += step
        budget -= 1
        if query.filtered and not _matches(query, record):
            continue
        out.append(record)
        size += len(record)
        remaining -= 1
        if remaining == 0:
            done = True
            break
    done = done or ((key > stop) if step > 0 else (key < stop))
    return Page(out, None if done else ReadCursor(key, stop, remaining), key - step)


def _stream_id(txn: Any, dbs: Databases, stream: str) -> int:
    raw = txn.get(stream.encode(), db=dbs.streams)
    if raw is None:
        raise StreamNotFound(stream)
    return int(STREAM_STATE.unpack(raw)[0])


def _log_record(txn: Any, dbs: Databases, position: int) -> bytes:
    record: bytes | None = txn.get(U64.pack(position), db=dbs.log)
    if record is None:
        raise Corruption(f"log has no event at position {position}", position)
    return record


def _start(txn: Any, dbs: Databases, query: ReadQuery) -> ReadCursor | None:
    """Resolve a query into the first and last key to visit, or None if empty."""
    if query.stream is None:
        first, last = 1, last_position(txn, dbs)

        def ts_of(k: int) -> int:
            return records.recorded_at_ns(records.decode(_log_record(txn, dbs, k)))
    else:
        raw = txn.get(query.stream.encode(), db=dbs.streams)
        if raw is None:
            raise StreamNotFound(query.stream)
        stream_id, next_rev, _ = STREAM_STATE.unpack(raw)
        first, last = 0, next_rev - 1

        def ts_of(k: int) -> int:
            pos = U64.unpack(txn.get(INDEX_KEY.pack(stream_id, k), db=dbs.stream_index))[0]
            return records.recorded_at_ns(records.decode(_log_record(txn, dbs, pos)))

    if last < first:
        return None
    lo, hi = first, last
    if query.from_time_ns is not None:
        lo = _first_at_or_after(lo, hi, query.from_time_ns, ts_of)
    if query.to_time_ns is not None:
        hi = _first_at_or_after(lo, hi, query.to_time_ns, ts_of) - 1
    if query.backwards:
        start = hi if query.start is None else min(query.start, hi)
        stop = lo
        empty = start < stop
    else:
        start = lo if query.start is None else max(query.start, lo)
        stop = hi
        empty = start > stop
    if empty:
        return None
    return ReadCursor(start, stop, query.max_count or -1)


def _first_at_or_after(lo: int, hi: int, ts: int, ts_of: Callable[[int], int]) -> int:
    """Smallest key in [lo, hi] whose timestamp is >= ts, or hi + 1."""
    end = hi + 1
    while lo < end:
        mid = (lo + end) // 2
        if ts_of(mid) >= ts:
            end = mid
        else:
            lo = mid + 1
    return lo


def _matches(query: ReadQuery, record: bytes) -> bool:
    event = records.decode(record)
    if query.event_types and event.event_type not in query.event_types:
        return False
    if query.streams and event.stream not in query.streams:
        return False
    if query.stream_prefixes and not event.stream.startswith(query.stream_prefixes):
        return False
    return not (
        query.correlation_id and event.metadata.get("correlation_id") != query.correlation_id
    )
