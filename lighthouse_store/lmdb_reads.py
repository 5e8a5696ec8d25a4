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

A corrupt record
================

A record that cannot be read (its checksum fails, its position is missing,
its stream's index has no entry for it) is never returned, and it hides
nothing else: every route (a stream read, ``$all``, a time window, a
filter, GetEvent, a subscription, which reads pages like a Read) fails with
:class:`Corruption` (``DATA_LOSS``, naming the position) exactly when it
reaches that record, after every good record before it was delivered (the
page ends just before it), and a read that does not reach it does not
notice it. A time window's bounds are found around unreadable records
(``_around``), never through them.

A filter cannot know the type, metadata or (from the record) the stream of
a record it cannot decode, so a filtered read that reaches one fails too,
as KurrentDB's filtered ``$all`` reads fail on a chunk they cannot read:
skipping it would tell the client "nothing here matched" when nobody knows.
With one exception, where it is known: a filter on streams (names or
prefixes) skips an unreadable record whose stream is vouched for by the
indexes (``_confirmed_stream``: the damaged bytes name a stream and a
revision, and ``streams`` and ``stream_idx`` independently lead back to its
position) when that stream is outside the filter, since the record could
not match whatever its type. Damaged LMDB pages (a B-tree, not a record)
fail the whole read transaction; ``lmdb_txn`` makes them ``Corruption`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from lighthouse_store import corruption, records
from lighthouse_store.errors import Corruption, StreamNotFound
from lighthouse_store.lmdb_format import INDEX_KEY, MAX_KEY_BYTES, STREAM_STATE, U64, Databases
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
    record = records.checked(_log_record(txn, dbs, position), position)
    if records.event_id_bytes(records.decode(record)) != event_id:
        raise corruption.found(
            corruption.INDEX, position,
            f"the event id index points at position {position}, which holds another event",
        )  # fmt: skip
    return record


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
                raise _missing(position)
            record = records.checked(raw, position)
        return record

    if query.stream is None:

        def fetch(key: int) -> bytes:  # a position
            return record_at(key, U64.pack(key))

    else:
        stream, index = query.stream, dbs.stream_index
        stream_id = _stream_id(txn, dbs, stream)

        def fetch(key: int) -> bytes:  # a revision
            raw = txn.get(INDEX_KEY.pack(stream_id, key), db=index)
            if raw is None:
                raise _no_index_entry(stream, key)
            return record_at(U64.unpack(raw)[0], raw)  # the entry is the log's key

    skip = None
    if query.streams or query.stream_prefixes:

        def skip(key: int) -> bool:
            known = query.stream or _confirmed_stream(txn, dbs, key)
            return known is not None and not _stream_matches(query, known)

    scan = max_scan or max_events * SCAN_FACTOR
    return _collect(query, cursor, max_events, max_bytes, scan, fetch, skip)


def _collect(
    query: ReadQuery,
    cursor: ReadCursor,
    max_events: int,
    max_bytes: int,
    budget: int,
    fetch: Callable[[int], bytes],
    skip: Callable[[int], bool] | None,
) -> Page:
    """Visit keys from the cursor on. A record that cannot be read ends the
    page just before it, so every good record ahead of it is delivered; the
    next page starts at it and fails (Corruption), unless ``skip`` proves
    the record could not match the query's filter."""
    step = -1 if query.backwards else 1
    key, stop, remaining = cursor.next_key, cursor.stop_key, cursor.remaining
    out: list[bytes] = []
    size = 0
    done = False
    while budget > 0 and len(out) < max_events and size < max_bytes:
        if (key > stop) if step > 0 else (key < stop):
            done = True
            break
        try:
            record: bytes | None = fetch(key)
        except Corruption:
            if skip is not None and skip(key):
                record = None
            elif out:
                break
            else:
                raise
        key += step
        budget -= 1
        if record is None or (query.filtered and not _matches(query, record)):
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


def _indexed_position(txn: Any, dbs: Databases, stream: str, stream_id: int, revision: int) -> int:
    raw = txn.get(INDEX_KEY.pack(stream_id, revision), db=dbs.stream_index)
    if raw is None:
        raise _no_index_entry(stream, revision)
    return int(U64.unpack(raw)[0])


def _log_record(txn: Any, dbs: Databases, position: int) -> bytes:
    record: bytes | None = txn.get(U64.pack(position), db=dbs.log)
    if record is None:
        raise _missing(position)
    return record


def _missing(position: int) -> Corruption:
    return corruption.found(
        corruption.MISSING, position, f"log has no event at position {position}"
    )


def _no_index_entry(stream: str, revision: int) -> Corruption:
    return corruption.found(
        corruption.INDEX, None, f"stream {stream!r} has no index entry for revision {revision}"
    )


def _confirmed_stream(txn: Any, dbs: Databases, position: int) -> str | None:
    """The stream of the unreadable record at ``position``, when the indexes
    vouch for it, else None. The damaged bytes are parsed as they are; the
    stream and revision they name count only if ``streams`` and
    ``stream_idx`` independently lead back to this position (a damaged name
    or revision would have to name another stream whose index points here)."""
    raw = txn.get(U64.pack(position), db=dbs.log)
    if raw is None:
        return None
    try:
        event = records.decode(raw)
    except DecodeError:
        return None
    name = event.stream.encode()
    if not 0 < len(name) <= MAX_KEY_BYTES:
        return None
    state = txn.get(name, db=dbs.streams)
    if state is None:
        return None
    index_key = INDEX_KEY.pack(STREAM_STATE.unpack(state)[0], event.revision)
    return event.stream if txn.get(index_key, db=dbs.stream_index) == U64.pack(position) else None


def _start(txn: Any, dbs: Databases, query: ReadQuery) -> ReadCursor | None:
    """Resolve a query into the first and last key to visit, or None if empty."""
    if query.stream is None:
        first, last = 1, last_position(txn, dbs)

        def position_of(k: int) -> int:
            return k
    else:
        raw = txn.get(query.stream.encode(), db=dbs.streams)
        if raw is None:
            raise StreamNotFound(query.stream)
        stream_id, next_rev, _ = STREAM_STATE.unpack(raw)
        first, last = 0, next_rev - 1
        stream = query.stream

        def position_of(k: int) -> int:
            return _indexed_position(txn, dbs, stream, stream_id, k)

    def ts_of(k: int) -> int | None:
        """recorded_at of key ``k``, None if its record cannot be read."""
        try:
            position = position_of(k)
            record = records.checked(_log_record(txn, dbs, position), position)
        except Corruption:
            return None
        return records.recorded_at_ns(records.decode(record))

    if last < first:
        return None
    lo, hi = first, last
    if query.from_time_ns is not None:
        lo = _first_at_or_after(lo, hi, query.from_time_ns, _around(ts_of, first, last, 1))
    if query.to_time_ns is not None:
        hi = _first_at_or_after(lo, hi, query.to_time_ns, _around(ts_of, first, last, -1)) - 1
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


def _around(
    ts_of: Callable[[int], int | None], first: int, last: int, toward: int
) -> Callable[[int], int]:
    """``ts_of`` for a binary search, with a stand-in for unreadable keys.

    An unreadable record's recorded_at lies between its readable
    neighbours' (it never decreases along the log). Where a window's bound
    falls among unreadable records, they go inside the window, so the read
    reaches them and fails there (DATA_LOSS) rather than silently leaving
    out records that may belong to it: for a window's start (``toward`` 1)
    an unreadable key stands in with the next readable key's time (its
    latest possible), for its end (-1) with the previous one's (its
    earliest). Either stand-in keeps the times in order; a read whose window
    is clear of them never touches them."""
    unbounded = (1 << 64) * toward

    def ts(k: int) -> int:
        while first <= k <= last:
            t = ts_of(k)
            if t is not None:
                return t
            k += toward
        return unbounded

    return ts


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


def _stream_matches(query: ReadQuery, stream: str) -> bool:
    return (not query.streams or stream in query.streams) and (
        not query.stream_prefixes or stream.startswith(query.stream_prefixes)
    )


def _matches(query: ReadQuery, record: bytes) -> bool:
    event = records.decode(record)
    if query.event_types and event.event_type not in query.event_types:
        return False
    if not _stream_matches(query, event.stream):
        return False
    return not (
        query.correlation_id and event.metadata.get("correlation_id") != query.correlation_id
    )
