"""The LMDB implementation of :class:`EventStore`: opening a data dir, the write path.

Beside it: ``lmdb_format.py`` (the on-disk format spec), ``lmdb_txn.py``
(driver errors and the write transaction), ``lmdb_reads.py`` (paged reads,
each in a short read transaction) and ``tail.py`` (recent records in memory).

Write path
==========

``commit()`` is the only writer. It runs on the group-commit thread
(``writer.py``) and applies a whole group of appends in one write transaction
(``lmdb_txn.write_transaction``): for each append, in arrival order, it first
checks (idempotency via ``event_ids``, then the expected revision via
``streams``), and only if every check passes does it stage the append's
records, so a failed append leaves nothing behind while the others in the
group still commit. Checks see the appends staged earlier in the same group.
The staged writes go in with a few ``putmulti`` calls at the end (the log with
``MDB_APPEND``, the indexes in key order): py-lmdb releases the GIL around
each call, and a handful per group instead of several per event keeps the
event loop and the writer from trading the GIL back and forth. Positions are
``head + 1 ...``; ``recorded_at`` is taken once per transaction and never goes
below the previous transaction's, so it never decreases with position. In
``fsync`` durability ``commit()`` returns (and so any append of the group is
acknowledged) only after two flushes: LMDB's sync commit flushes the data
pages (``fdatasync``) before it writes the meta page that makes them the
newest state, and then ``lmdb_txn.write_transaction`` flushes the file
again, meta page included. ``async`` opens the environment with ``sync=False`` and
flushes nothing. LMDB's copy-on-write B-trees make a commit atomic: a
``kill -9`` at any moment leaves the last committed state, never a torn record.

The second flush runs after the transaction, outside LMDB's write lock: the
environment is opened with ``metasync=False`` (``MDB_NOMETASYNC``), so LMDB's
commit writes the meta page without flushing it. LMDB's own sync commit would
hold the write lock through both flushes, so with several worker processes
their commits and flushes ran strictly one after another. Now the lock is held
through one flush, another worker commits while this one flushes the meta
page, and their flushes may share a disk write. The in-process file lock
stays held through the flush, so this process's filler (``prealloc.py``)
writes no zeros for it to flush; the supervisor's filler, with several
workers, takes only LMDB's write lock and can. Durability holds (nothing is
acknowledged before both flushes); integrity is LMDB's guarantee for
``MDB_NOMETASYNC`` (the data pages are on disk before the meta page naming
them is written, so a power cut leaves the previous or the new state). Between
the commit and its second flush, other processes' readers (and this process's
LMDB reads) can see the group, which a power cut in that moment would undo; so
can they in LMDB's own sync commit, between its meta write and its flush: the
window is longer here, not new. The group is never acknowledged, announced to
other workers, put in the tail or delivered to subscriptions before the flush. Measured in
``perf/RESULTS.md`` ("Measured and kept").

Several processes
=================

With ``--workers N`` every worker process opens the same environment and has
a store and a writer of its own (``supervisor.py``). LMDB's write lock (a
robust mutex in ``lock.mdb``, recovered when its holder dies) orders their
write transactions; every check (idempotency, expected revision, a
checkpoint's never-backwards max) reads the database inside the transaction,
so they hold across processes. What the store keeps in memory about the log
must be read there too: each write transaction starts by finding the last
position on disk (one ``cursor.last``) and the next stream id (one ``meta``
get); only when another process moved the head does it decode the last
record for its ``recorded_at``, so the stamp never goes below another
worker's either. ``head_position()`` is this process's last view of the head:
its own commits, and the commits of other workers it hears of
(:meth:`observe_head`, from ``wakeups.py``); :meth:`last_position` reads the
disk. The in-memory tail holds only this process's commits: a reader finds
other workers' records in LMDB. ``shared`` says other processes write the
environment: the preallocator then takes LMDB's write lock, not an
in-process one (``prealloc.py``).

Space
=====

``--map-size`` is the map's size at start. Before a commit, once 75% of the
map is used (``GROW_AT``), and whenever a commit finds it full
(``MDB_MAP_FULL``, :class:`MapFull`: the transaction was aborted, nothing of
it written), the writer grows the map (doubled, or enough for the group
twice over) up to :attr:`max_map_size` and commits again; only a map at that
limit refuses, with a recoverable :class:`StorageFull`. The remap waits for
this process's open transactions (``lmdb_txn.MapGate``); other processes
adopt the larger size at their next transaction (``MDB_MAP_RESIZED``,
``lmdb_txn.py``). Each commit first asks the space guard (``space.py``)
whether appends are refused for disk or map pressure: one check per group,
and the refusal applies to each append as the read-only one does (after the
idempotent-retry check, so a retry of a recorded append is still answered).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lighthouse_store import integrity, lmdb_format, lmdb_reads, lmdb_txn, records, space
from lighthouse_store.config import TAIL_BYTES, Durability
from lighthouse_store.corruption import Finding
from lighthouse_store.degradation import CORRUPTION, DEGRADED, WriteGate, allowlisted
from lighthouse_store.errors import (
    Corruption,
    EventIdConflict,
    InvalidArgument,
    MapFull,
    StorageFailure,
    StorageFull,
    StoreError,
    WrongExpectedRevision,
)
from lighthouse_store.lmdb_format import INDEX_KEY, STREAM_STATE, U64
from lighthouse_store.prealloc import Preallocator
from lighthouse_store.space import SpaceGuard
from lighthouse_store.store import (
    AppendCommand,
    AppendResult,
    EventStore,
    ExpectedKind,
    Page,
    ReadCursor,
    ReadQuery,
)
from lighthouse_store.tail import Tail

log = logging.getLogger("lighthouse_store.store")

GROW_AT = 0.75  # the map grows before a commit once this much of it is used
GROW_ALIGN = 1 << 20


class LmdbEventStore(EventStore):
    def __init__(
        self,
        data_dir: Path,
        *,
        map_size: int,
        durability: Durability,
        max_readers: int = 1024,
        clock: Callable[[], int] = time.time_ns,
        tail_bytes: int = TAIL_BYTES,
        preallocate: int = 0,
        shared: bool = False,
        gate: WriteGate | None = None,
        max_map_size: int = 0,
        block_ratio: float = 0.95,
        resume_ratio: float = 0.90,
    ) -> None:
        self._clock = clock
        # Read by every append: the degradation level's refusal (degradation.py).
        self.gate = gate or WriteGate()
        self._shared = shared
        self.data_dir = data_dir
        # What this process knows of the log, loaded by _catch_up in every
        # write transaction (set by the writer thread only):
        self._head = 0
        self._last_ts = 0  # recorded_at of the record at _head (ns)
        self._next_stream_id = 1
        self._observed = 0  # the head other processes' commits moved to (observe_head)
        self._flush_seconds = 0.0  # of the last commit() (writer thread only)
        self._tail = Tail(tail_bytes)
        self._degraded: Finding | None = None
        self._data_dir = Path(data_dir)
        marker = integrity.check_files(self._data_dir)  # before LMDB maps the file
        path = lmdb_format.env_path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        durable = durability is Durability.FSYNC
        self._durable = durable
        self._env = lmdb_txn.open_env(
            path, map_size=map_size, durable=durable, max_readers=max_readers
        )
        self._gate = lmdb_txn.MapGate()  # every transaction of this process holds it
        self._map_limit = space.map_limit(path, max(max_map_size, map_size) if max_map_size else 0)
        self._space = SpaceGuard(
            path, self.map_ratio, block_ratio=block_ratio, resume_ratio=resume_ratio
        )
        # Held through every write transaction (the only times LMDB writes the
        # file) and by the preallocator around each write of zeros past its end.
        self._file_lock = threading.Lock()
        try:
            with lmdb_txn.driver_errors(lmdb_txn.OPEN_FAILED, for_operator=True):
                self._open(path, durable, preallocate, marker)
        except BaseException:
            self._env.close()
            raise

    def _open(self, path: Path, durable: bool, preallocate: int, marker: str | None) -> None:
        """Open the databases, check the format and the store id, load the
        head, check the newest records (``integrity.py``), start the
        preallocator. Corruption among the newest records makes the store
        read-only (:attr:`degraded`); it does not stop the start."""
        self._env.reader_check()  # drop reader slots left by a killed process
        self._dbs = lmdb_format.open_databases(self._env)
        with lmdb_txn.write_transaction(
            self._env, self._file_lock, gate=self._gate, flush=durable
        ) as txn:
            lmdb_format.check_format(txn, self._dbs)
            self.store_id = integrity.claim_store_id(txn, self._dbs, marker)
            self._head = -1  # unknown: _catch_up reads (and checks) the newest record
            try:
                self._catch_up(txn)
            except Corruption:  # reported; check_newest below says what it is
                self._head = lmdb_reads.last_position(txn, self._dbs)
                self._last_ts = integrity.newest_readable_time(txn, self._dbs)
                raw = txn.get(lmdb_format.NEXT_STREAM_ID_KEY, db=self._dbs.meta)
                self._next_stream_id = U64.unpack(raw)[0] if raw else 1
        if marker is None:
            integrity.write_marker(self._data_dir, self.store_id)
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            findings = integrity.check_newest(txn, self._dbs)
        if findings:
            self.degrade(findings[0])
        self._page_size = int(self._env.stat()["psize"])
        self._prealloc: Preallocator | None = None
        if preallocate:
            self._prealloc = Preallocator(
                path / "data.mdb",
                ahead=preallocate,
                used_bytes=self.used_bytes,
                file_lock=(
                    lmdb_txn.WriteLock(self._env, self._gate) if self._shared else self._file_lock
                ),
                sync=durable,
                limit=self._fill_limit,
            ).start()

    # -- writes ------------------------------------------------------------

    def head_position(self) -> int:
        # Two values, each written by one thread (the writer; the event loop),
        # so neither can move the other back.
        return max(self._head, self._observed)

    def last_position(self) -> int:
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            return lmdb_reads.last_position(txn, self._dbs)

    def observe_head(self) -> int:
        """Read the head from the disk, after another process's commit: from
        now on :meth:`head_position` is at least that. Call it from one thread."""
        self._observed = max(self._observed, self.last_position())
        return self._observed

    def reader_check(self) -> int:
        """Free the LMDB reader slots of processes that died (a killed
        worker's); return how many were freed."""
        with lmdb_txn.driver_errors(lmdb_txn.OPEN_FAILED, for_operator=True):
            return int(self._env.reader_check())

    @property
    def degraded(self) -> Finding | None:
        """The corruption the start-up check of the newest records found
        (or :meth:`degrade` was told of), or None: the degradation controller
        starts ``degraded`` with it (``degradation.py``)."""
        return self._degraded

    def degrade(self, finding: Finding) -> None:
        """Take no more appends from now on, for ``finding`` (the first one
        stays the reason): the gate closes until the controller opens it. An
        idempotent retry of an append already recorded is still answered (it
        writes nothing), and checkpoints (acks) are still stored."""
        if self._degraded is None:
            self._degraded = finding
            self.gate.set(DEGRADED, CORRUPTION, finding.position)
            log.error(
                "the store is read-only from now on: %s; reads and subscriptions go on. "
                "Run lighthouse-store verify, then repair (README, Operations)",
                finding.message,
            )

    def last_txnid(self) -> int:
        """LMDB's newest committed transaction id, read from its meta page
        without a transaction: it moves with every commit of any process."""
        return int(lmdb_txn.env_info(self._env, self._gate)["last_txnid"])

    def scrub(self, after: int, limit: int) -> tuple[int, list[Finding]]:
        """Check up to ``limit`` records from position ``after + 1`` on, as
        the start-up check does (``integrity.check_run``: reported); the last
        position checked (0 past the end of the log, to start again) and the
        findings (``scrub.py``)."""
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            cur = txn.cursor(db=self._dbs.log)
            if not cur.set_range(U64.pack(after + 1)):
                return 0, []
            walk = cur.iternext()
            last, findings = integrity.check_run(txn, self._dbs, walk, limit, previous=after)
            return (0 if last >= lmdb_reads.last_position(txn, self._dbs) else last), findings

    @property
    def durability(self) -> Durability:
        flags = self._env.flags()
        return Durability.FSYNC if flags["sync"] else Durability.ASYNC

    @property
    def tail_bytes(self) -> int:
        """The budget of the in-memory tail of recent records (0: off)."""
        return self._tail.max_bytes

    @property
    def map_size(self) -> int:
        """The LMDB map size: the most the store can hold."""
        return int(lmdb_txn.env_info(self._env, self._gate)["map_size"])

    @property
    def max_map_size(self) -> int:
        """The most the map grows to: ``--max-map-size``, or the data volume's size."""
        return self._map_limit

    def map_ratio(self, free: int = 0) -> float:
        """The used part of what the map can become (``space.py``)."""
        return self.used_bytes() / max(self._map_limit, 1)

    def space_refusal(self) -> StorageFull | None:
        """Whether appends are refused for disk or map pressure now (``space.py``)."""
        return self._space.refusal()

    def _fill_limit(self, end: int) -> int:
        """The longest the preallocator may make the file (``space.fill_limit``)."""
        return space.fill_limit(self._data_dir, end, self.map_size)

    def _grow(self, needed: int = 0) -> bool:
        """Grow the map (doubled, or enough for ``needed`` more bytes twice
        over) up to :attr:`max_map_size`; False if it cannot grow. Writer
        thread only, with no transaction of its own open."""
        size, used = self.map_size, self.used_bytes()
        wanted = -(-max(2 * size, used + 2 * needed) // GROW_ALIGN) * GROW_ALIGN  # rounded up
        target = min(self._map_limit, wanted)
        if target <= size:  # at the limit; another process may have grown it further
            return lmdb_txn.resize(self._env, self._gate) > size
        grown = lmdb_txn.resize(self._env, self._gate, target)
        log.info("LMDB map grown from %d to %d bytes (at most %d)", size, grown, self._map_limit)
        return grown > size

    def used_bytes(self) -> int:
        """Bytes of ``data.mdb`` that LMDB uses (the file may be longer: ``prealloc.py``)."""
        return (int(lmdb_txn.env_info(self._env, self._gate)["last_pgno"]) + 1) * self._page_size

    def flush_seconds(self) -> float:
        return self._flush_seconds

    def _timed_flush(self, seconds: float) -> None:
        self._flush_seconds += seconds

    def commit(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None = None
    ) -> list[AppendResult | StoreError]:
        self._flush_seconds = 0.0
        info = lmdb_txn.env_info(self._env, self._gate)  # one read of the meta page
        size, used = int(info["map_size"]), (int(info["last_pgno"]) + 1) * self._page_size
        if used > GROW_AT * size and size < self._map_limit:
            self._grow()
        try:
            return self._commit_growing(commands, checkpoints)
        except StorageFull:
            if len(commands) < 2:
                raise
        # One append too big for the space left must not fail the others of
        # its group: each goes again in a transaction of its own, in order, and
        # only those that do not fit fail. The checkpoints ride with the first
        # that fits; if none fits, nothing was written and the group fails whole.
        results: list[AppendResult | StoreError] = []
        pending = checkpoints
        for command in commands:
            try:
                results += self._commit_growing([command], pending)
                pending = None
            except StorageFull as exc:
                results.append(exc)
        if pending:
            raise lmdb_txn.storage_full()
        return results

    def _commit_growing(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None
    ) -> list[AppendResult | StoreError]:
        """:meth:`_commit`, again after growing the map while LMDB finds it full."""
        while True:
            try:
                return self._commit(commands, checkpoints)
            except MapFull:
                needed = sum(c.size for c in commands) + 64 * 1024
                if not self._grow(needed):
                    raise lmdb_txn.storage_full() from None

    def _commit(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None
    ) -> list[AppendResult | StoreError]:
        results: list[AppendResult | StoreError] = []
        refusal = self._space.refusal()  # the one check of disk and map pressure
        with lmdb_txn.write_transaction(
            self._env, self._file_lock, gate=self._gate, flush=self._durable,
            timed=self._timed_flush,
        ) as txn:  # fmt: skip
            self._catch_up(txn)
            stamp = max(self._clock(), self._last_ts)
            group = _Group(self._head, self._next_stream_id, records.timestamp_field(stamp))
            group.refusal = refusal
            for cmd in commands:
                try:
                    results.append(self._apply(txn, group, cmd))
                except StoreError as exc:
                    results.append(exc)
            self._write(txn, group)
            for consumer, position in (checkpoints or {}).items():
                key = consumer.encode()
                stored = txn.get(key, db=self._dbs.consumers)
                if stored is None or U64.unpack(stored)[0] < position:  # never backwards
                    txn.put(key, U64.pack(position), db=self._dbs.consumers)
        self._tail.add(group.records)  # only once durable: readers never see more
        if group.head != self._head:
            self._head, self._last_ts = group.head, stamp
        self._next_stream_id = group.next_stream_id
        return results

    def _catch_up(self, txn: Any) -> None:
        """Load what other processes may have changed since this one's last
        write transaction: the head (and its ``recorded_at``, decoded only when
        the head moved) and the next stream id. Positions only grow, so the
        same last position means no other process appended since."""
        cur = txn.cursor(db=self._dbs.log)
        position = U64.unpack(cur.key())[0] if cur.last() else 0
        if position != self._head:
            self._head, self._last_ts = lmdb_reads.head(txn, self._dbs)
        raw = txn.get(lmdb_format.NEXT_STREAM_ID_KEY, db=self._dbs.meta)
        self._next_stream_id = U64.unpack(raw)[0] if raw else 1

    def _write(self, txn: Any, group: _Group) -> None:
        """Put a group's writes: a few C calls (py-lmdb releases the GIL in each)
        instead of several per event, in key order for B-tree locality."""
        if group.log:
            # Every log, index and id key is new. If one existed, the in-memory
            # head disagrees with the disk: refuse the commit, never overwrite.
            for db, items, append in (
                (self._dbs.log, group.log, True),
                (self._dbs.stream_index, sorted(group.stream_index), False),
                (self._dbs.event_ids, sorted(group.event_ids.items()), False),
            ):
                _, added = txn.cursor(db=db).putmulti(items, overwrite=False, append=append)
                if added != len(items):
                    raise StorageFailure("the store is inconsistent: a new key already exists")
            txn.cursor(db=self._dbs.streams).putmulti(
                sorted((name, STREAM_STATE.pack(*state)) for name, state in group.streams.items())
            )
        if group.next_stream_id != self._next_stream_id:
            next_id = U64.pack(group.next_stream_id)
            txn.put(lmdb_format.NEXT_STREAM_ID_KEY, next_id, db=self._dbs.meta)

    def _apply(self, txn: Any, group: _Group, cmd: AppendCommand) -> AppendResult:
        """Check one append against the store and the group so far, then stage
        its writes. Raises before staging anything if a check fails."""
        ids, proposed = cmd.event_ids, cmd.proposed
        if not ids:  # validation never lets one through
            raise InvalidArgument("events: an append needs at least one event")
        staged_ids, id_db = group.event_ids, self._dbs.event_ids
        # Usually none of the ids exists: one C call (getmulti) finds that out.
        if not staged_ids.keys().isdisjoint(ids) or txn.cursor(db=id_db).getmulti(ids):
            known = [staged_ids.get(i) or txn.get(i, db=id_db) for i in ids]
            return self._replayed(txn, group, cmd, known)
        # After the retry check (a retry writes nothing): the one place an
        # append is refused for the degradation level.
        refusal = self.gate.refusal
        if refusal is not None and not allowlisted(cmd):
            raise refusal
        if group.refusal is not None and not allowlisted(cmd):  # disk or map pressure (space.py)
            raise group.refusal
        name = cmd.stream.encode()
        state = group.streams.get(name)
        if state is None:
            raw = txn.get(name, db=self._dbs.streams)
            state = None if raw is None else STREAM_STATE.unpack(raw)
        exists = state is not None
        stream_id, next_rev = (state[0], state[1]) if state else (group.next_stream_id, 0)
        exp = cmd.expected
        if exp.kind is not ExpectedKind.ANY and not (
            (exp.kind is ExpectedKind.NO_STREAM and not exists)
            or (exp.kind is ExpectedKind.STREAM_EXISTS and exists)
            or (exp.kind is ExpectedKind.EXACT and exists and next_rev - 1 == exp.revision)
        ):
            actual = str(next_rev - 1) if exists else "no_stream"
            raise WrongExpectedRevision(cmd.stream, str(exp), actual)
        if not exists:
            group.next_stream_id += 1
        first, n = group.head + 1, len(ids)
        positions, revisions = range(first, first + n), range(next_rev, next_rev + n)
        keys = [U64.pack(p) for p in positions]
        recs = records.encode_records(
            proposed, records.stream_field(cmd.stream), next_rev, first, group.recorded_at_field
        )
        group.log += zip(keys, recs, strict=True)
        group.records.update(zip(positions, recs, strict=True))
        index_keys = [INDEX_KEY.pack(stream_id, r) for r in revisions]
        group.stream_index += zip(index_keys, keys, strict=True)
        staged_ids.update(zip(ids, keys, strict=True))
        group.streams[name] = (stream_id, next_rev + n, positions[-1])
        group.head = positions[-1]
        return AppendResult(first, positions[-1], revisions[-1])

    def _replayed(
        self, txn: Any, group: _Group, cmd: AppendCommand, known: list[bytes | None]
    ) -> AppendResult:
        """An append whose ids exist: the original result if it is a true retry."""
        if any(p is None for p in known):
            raise EventIdConflict(
                "some of the event ids were already recorded and some were not; "
                "an append is idempotent only as a whole",
                stream=cmd.stream,
            )
        positions = [U64.unpack(p)[0] for p in known if p is not None]
        last = None
        for i, (proposed, position) in enumerate(zip(cmd.proposed, positions, strict=True)):
            raw = group.records.get(position) or txn.get(U64.pack(position), db=self._dbs.log)
            stored = records.decode(records.checked(raw, position))
            if (
                position != positions[0] + i
                or stored.stream != cmd.stream
                or not records.same_content(stored, proposed)
            ):
                raise EventIdConflict(
                    f"event id {stored.event_id} is already recorded "
                    "with other content, in another stream or in another order",
                    stream=cmd.stream,
                    event_id=stored.event_id,
                )
            last = stored
        assert last is not None
        return AppendResult(positions[0], positions[-1], last.revision, duplicate=True)

    # -- reads (lmdb_reads.py), each in a short read transaction of its own ----

    def get_checkpoint(self, consumer: str) -> int | None:
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            return lmdb_reads.checkpoint(txn, self._dbs, consumer)

    def get_event(self, event_id: bytes) -> bytes | None:
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            return lmdb_reads.event_by_id(txn, self._dbs, event_id)

    def read_page(
        self,
        query: ReadQuery,
        cursor: ReadCursor | None,
        max_events: int,
        max_bytes: int,
        max_scan: int = 0,
    ) -> Page:
        with lmdb_txn.read_transaction(self._env, self._gate) as txn:
            return lmdb_reads.page(
                txn, self._dbs, self._tail.get, query, cursor, max_events, max_bytes, max_scan
            )

    def close(self) -> None:
        if self._prealloc is not None:
            self._prealloc.close()
        self._env.close()


class _Group:
    """The writes of one commit, staged so that later appends in the group see
    earlier ones, and put in a few calls at the end (``_write``)."""

    __slots__ = (
        "event_ids",
        "head",
        "log",
        "next_stream_id",
        "recorded_at_field",
        "records",
        "refusal",
        "stream_index",
        "streams",
    )

    def __init__(self, head: int, next_stream_id: int, recorded_at_field: bytes) -> None:
        self.head = head
        self.next_stream_id = next_stream_id
        self.recorded_at_field = recorded_at_field  # the same for every record of a commit
        # Entries for each database, as (key, value) in lmdb_format's layout:
        self.log: list[tuple[bytes, bytes]] = []  # ascending positions
        self.stream_index: list[tuple[bytes, bytes]] = []
        self.event_ids: dict[bytes, bytes] = {}
        self.streams: dict[bytes, tuple[int, int, int]] = {}  # name -> unpacked stream state
        self.records: dict[int, bytes] = {}  # position -> record, for in-group retries
        self.refusal: StorageFull | None = None  # appends refused for space (space.py)
