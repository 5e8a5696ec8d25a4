"""The degraded-mode read cache.

Reads and subscriptions fill it; when the daemon cannot be reached the client
answers ``read_stream`` / ``read_all`` / ``get_event`` from it, marked stale.
It answers only what it can answer *honestly*:

* ``read_stream`` returns the contiguous run of cached revisions starting at
  ``from_revision`` (default: 0 forwards, the highest cached revision
  backwards) in the read direction, up to ``max_count`` events (0 = no
  limit); the run ends at the first revision not cached. If the start is not
  cached the answer is ``None`` (the client raises Unavailable): the cache
  cannot tell "no such event" from "not cached".
* ``read_all`` does the same over positions (default start: 1 forwards, the
  highest cached backwards); the filter (``Filter.matches``) and the time
  window ``[from_ns, to_ns)`` on ``recorded_at_ns`` are applied to the run
  while it is walked, and ``max_count`` counts the events that pass, as on
  the server.
* The float that comes with an answer is the oldest ``fetched_at`` (the
  ``clock()`` of its ``put``) among the events the answer rests on: the
  returned events; for a filtered or windowed read, every event of the run
  walked, since "nothing else matched in between" rests on them too (so an
  empty filtered answer still says when its run was fetched).

Memory tier: an ``OrderedDict`` position -> entry in LRU order with byte
accounting (payload, strings and metadata plus a fixed overhead: rough, but
the total stays <= ``max_bytes``; a bigger event is not kept in memory), and
indexes event_id -> position and stream -> {revision -> position} that change
together with it. An event that clashes with a cached one (same position, id
or stream revision: the store was replaced) evicts it, in both tiers.

Disk tier (when ``path`` is given), written through on every ``put`` and
bounded only by ``map_size``; integers are u64 big-endian::

    events   position                         -> fetched_at (f64 BE) + pb RecordedEvent
    ids      event_id (UTF-8)                 -> position
    streams  stream (UTF-8) + b"\0" + revision -> position
    meta     b"head"                          -> last noted head position

Opened ``sync=False, metasync=False`` (a cache; ``close()`` syncs once). A
failed disk write is dropped, never raised (``MapFullError`` logged at debug,
others at warning); a directory LMDB cannot open leaves a memory-only cache.
Lookups try memory, then disk, promoting disk hits into memory. One lock
guards everything. After ``close()`` it answers nothing and ignores writes.
One cache per directory per process (LMDB's rule, ``_dir_claims``): a second
raises ValueError.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from lighthouse_client._dir_claims import claim_dir, release_dir
from lighthouse_client._types import Filter, RecordedEvent
from lighthouse_proto.v1 import store_pb2

__all__ = ["ReadCache"]

_log = logging.getLogger(__name__)
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_OVERHEAD = 160  # rough per-entry cost of the objects and index slots around the payload
_HEAD = b"head"
_FIELDS: tuple[str, ...] = ("event_id", "event_type", "data", "content_type", "stream")
_FIELDS += ("revision", "position", "checksum")
_Answer = tuple[list[RecordedEvent], float] | None


@dataclass(frozen=True, slots=True)
class _Entry:
    event: RecordedEvent
    fetched_at: float
    size: int


def _entry(event: RecordedEvent, fetched_at: float) -> _Entry:
    size = _OVERHEAD + len(event.data) + sum(len(k) + len(v) for k, v in event.metadata.items())
    size += len(event.event_id) + len(event.event_type) + len(event.content_type)
    return _Entry(event, fetched_at, size + len(event.stream))


def _encode(e: _Entry) -> bytes:
    ev = e.event
    pb = store_pb2.RecordedEvent(metadata=ev.metadata, **{f: getattr(ev, f) for f in _FIELDS})
    pb.recorded_at.seconds, pb.recorded_at.nanos = divmod(ev.recorded_at_ns, 1_000_000_000)
    return _F64.pack(e.fetched_at) + pb.SerializeToString()


def _decode(raw: bytes) -> _Entry:
    pb = store_pb2.RecordedEvent.FromString(raw[_F64.size :])
    at_ns = pb.recorded_at.seconds * 1_000_000_000 + pb.recorded_at.nanos
    fields = {f: getattr(pb, f) for f in _FIELDS}
    event = RecordedEvent(metadata=dict(pb.metadata), recorded_at_ns=at_ns, **fields)
    return _entry(event, _F64.unpack_from(raw)[0])


def _keep(
    filter: Filter | None, from_ns: int | None, to_ns: int | None
) -> Callable[[RecordedEvent], bool] | None:
    """The test a read_all applies to each event: the filter and the time window."""
    if filter is None and from_ns is None and to_ns is None:
        return None

    def keep(event: RecordedEvent) -> bool:
        at = event.recorded_at_ns
        return (
            (from_ns is None or at >= from_ns)
            and (to_ns is None or at < to_ns)
            and (filter is None or filter.matches(event))
        )

    return keep


def _stream_key(stream: str, revision: int) -> bytes:
    return stream.encode() + b"\0" + _U64.pack(revision)


class ReadCache:
    def __init__(
        self,
        max_bytes: int = 64 * 1024 * 1024,
        path: Path | str | None = None,
        map_size: int = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._mem: OrderedDict[int, _Entry] = OrderedDict()  # LRU first
        self._bytes = 0
        self._ids: dict[str, int] = {}
        self._revs: dict[str, dict[int, int]] = {}
        self._head: int | None = None
        self._closed = False
        self._env: Any = None
        self._key = ""
        if path is not None:
            self._open_disk(Path(path), map_size)

    def _open_disk(self, path: Path, map_size: int) -> None:
        key = claim_dir(path, "ReadCache")
        env: Any = None
        try:
            path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(str(path), map_size=map_size, max_dbs=4, sync=False, metasync=False)
            env.reader_check()
            self._events = env.open_db(b"events")
            self._idsdb = env.open_db(b"ids")
            self._streams = env.open_db(b"streams")
            self._meta = env.open_db(b"meta")
            with env.begin() as txn:
                raw = txn.get(_HEAD, db=self._meta)
        except (OSError, lmdb.Error) as exc:
            if env is not None:
                env.close()
            release_dir(key)
            _log.warning("read cache at %s unusable, memory only: %s", path, exc)
            return
        self._env, self._key = env, key
        self._head = None if raw is None else _U64.unpack(raw)[0]

    @property
    def memory_bytes(self) -> int:
        """Bytes the memory tier accounts for (always <= max_bytes)."""
        with self._lock:
            return self._bytes

    @property
    def head_position(self) -> int | None:
        with self._lock:
            return self._head

    # -- writes -------------------------------------------------------------

    def put(self, events: Iterable[RecordedEvent]) -> None:
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            entries = [_entry(e, now) for e in events]
            for e in entries:
                self._mem_add(e)
            if self._env is not None and entries:
                self._disk_write(lambda txn: self._disk_put(txn, entries))

    def note_head(self, position: int) -> None:
        with self._lock:
            if self._closed or position == self._head:
                return
            self._head = position
            if self._env is not None:
                self._disk_write(lambda txn: txn.put(_HEAD, _U64.pack(position), db=self._meta))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._mem, self._ids, self._revs, self._bytes = OrderedDict(), {}, {}, 0
            if self._env is not None:
                try:
                    self._env.sync(True)
                finally:
                    self._env.close()
                    self._env = None
                    release_dir(self._key)

    # -- reads --------------------------------------------------------------

    def get_event(self, event_id: str) -> tuple[RecordedEvent, float] | None:
        with self._lock, self._reader() as txn:
            position = self._ids.get(event_id)
            if position is None and txn is not None and event_id:  # LMDB keys are not empty
                raw = txn.get(event_id.encode(), db=self._idsdb)
                position = None if raw is None else _U64.unpack(raw)[0]
            found = None if position is None else self._at(txn, position)
            if found is None or found.event.event_id != event_id:
                return None  # (a mismatch: tiers disagree after a dropped disk write)
            return found.event, found.fetched_at

    def read_stream(
        self, stream: str, from_revision: int | None, backwards: bool, max_count: int
    ) -> tuple[list[RecordedEvent], float] | None:
        with self._lock, self._reader() as txn:

            def lookup(revision: int) -> _Entry | None:
                position = self._revs.get(stream, {}).get(revision)
                if position is None and txn is not None:
                    raw = txn.get(_stream_key(stream, revision), db=self._streams)
                    position = None if raw is None else _U64.unpack(raw)[0]
                found = None if position is None else self._at(txn, position)
                if found is None or found.event.stream != stream:
                    return None
                return found if found.event.revision == revision else None

            start = from_revision
            if start is None:
                start = self._last_revision(txn, stream) if backwards else 0
            return None if start is None else self._run(lookup, start, backwards, max_count, None)

    def read_all(
        self,
        from_position: int | None,
        backwards: bool,
        max_count: int,
        filter: Filter | None,
        *,
        from_ns: int | None = None,
        to_ns: int | None = None,
    ) -> tuple[list[RecordedEvent], float] | None:
        """``from_ns`` / ``to_ns``: the window ``[from_ns, to_ns)`` of
        ``recorded_at_ns`` (None: unbounded on that side)."""
        keep = _keep(filter, from_ns, to_ns)
        with self._lock, self._reader() as txn:
            start = from_position
            if start is None:
                start = self._last_position(txn) if backwards else 1
            if start is None:
                return None
            return self._run(lambda p: self._at(txn, p), start, backwards, max_count, keep)

    # -- internals (self._lock held) ----------------------------------------

    def _reader(self) -> Any:
        return nullcontext() if self._env is None else self._env.begin(buffers=False)

    def _run(
        self,
        lookup: Callable[[int], _Entry | None],
        start: int,
        backwards: bool,
        limit: int,
        keep: Callable[[RecordedEvent], bool] | None,
    ) -> _Answer:
        entry = lookup(start) if start >= 0 else None
        if entry is None:
            return None
        events: list[RecordedEvent] = []
        oldest = entry.fetched_at
        step = -1 if backwards else 1
        key = start
        while entry is not None:
            oldest = min(oldest, entry.fetched_at)
            if keep is None or keep(entry.event):
                events.append(entry.event)
                if limit and len(events) >= limit:
                    break
            key += step
            entry = lookup(key) if key >= 0 else None
        return events, oldest

    def _at(self, txn: Any, position: int) -> _Entry | None:
        entry = self._mem.get(position)
        if entry is not None:
            self._mem.move_to_end(position)
            return entry
        if txn is None:
            return None
        raw = txn.get(_U64.pack(position), db=self._events)
        if raw is None:
            return None
        entry = _decode(raw)
        self._mem_add(entry)
        return entry

    def _last_revision(self, txn: Any, stream: str) -> int | None:
        revs = self._revs.get(stream)
        best = max(revs) if revs else None
        if txn is not None:
            prefix = stream.encode() + b"\0"
            cur = txn.cursor(db=self._streams)
            found = cur.prev() if cur.set_range(stream.encode() + b"\x01") else cur.last()
            key = cur.key() if found else b""
            if key.startswith(prefix) and len(key) == len(prefix) + _U64.size:
                disk = _U64.unpack_from(key, len(prefix))[0]
                best = disk if best is None else max(best, disk)
        return best

    def _last_position(self, txn: Any) -> int | None:
        best = max(self._mem) if self._mem else None
        if txn is not None:
            cur = txn.cursor(db=self._events)
            if cur.last():
                disk = _U64.unpack(cur.key())[0]
                best = disk if best is None else max(best, disk)
        return best

    def _mem_add(self, entry: _Entry) -> None:
        ev = entry.event
        revision = self._revs.get(ev.stream, {}).get(ev.revision)
        for clash in {ev.position, self._ids.get(ev.event_id), revision}:
            if clash is not None and clash in self._mem:
                self._unindex(self._mem.pop(clash))
        if entry.size > self._max_bytes:
            return
        self._mem[ev.position] = entry
        self._bytes += entry.size
        self._ids[ev.event_id] = ev.position
        self._revs.setdefault(ev.stream, {})[ev.revision] = ev.position
        while self._bytes > self._max_bytes:  # never reaches the entry just added
            self._unindex(self._mem.popitem(last=False)[1])

    def _unindex(self, old: _Entry) -> None:
        ev = old.event
        self._bytes -= old.size
        del self._ids[ev.event_id]
        revs = self._revs[ev.stream]
        del revs[ev.revision]
        if not revs:
            del self._revs[ev.stream]

    def _disk_write(self, write: Callable[[Any], object]) -> None:
        try:
            with self._env.begin(write=True) as txn:
                write(txn)
        except lmdb.MapFullError:
            _log.debug("read cache on disk is full (map_size); write dropped")
        except lmdb.Error as exc:
            _log.warning("read cache disk write dropped: %s", exc)

    def _disk_put(self, txn: Any, entries: list[_Entry]) -> None:
        for e in entries:
            ev, pos = e.event, _U64.pack(e.event.position)
            id_key, rev_key = ev.event_id.encode(), _stream_key(ev.stream, ev.revision)
            clashes = {pos, txn.get(id_key, db=self._idsdb), txn.get(rev_key, db=self._streams)}
            if clashes != {pos}:  # new here, or the store changed under the cache
                for clash in clashes - {None}:
                    self._disk_drop(txn, clash)
                txn.put(id_key, pos, db=self._idsdb)
                txn.put(rev_key, pos, db=self._streams)
            txn.put(pos, _encode(e), db=self._events)

    def _disk_drop(self, txn: Any, pos: bytes) -> None:
        raw = txn.pop(pos, db=self._events)
        if raw is not None:
            old = _decode(raw).event
            for key, db in (
                (old.event_id.encode(), self._idsdb),
                (_stream_key(old.stream, old.revision), self._streams),
            ):
                if txn.get(key, db=db) == pos:
                    txn.delete(key, db=db)
