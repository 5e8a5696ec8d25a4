"""The one place LMDB driver errors become the store's own errors.

py-lmdb raises subclasses of ``lmdb.Error``; the rest of the daemon knows only
the domain errors of ``errors.py``. Every driver call whose failure the store
reports runs inside :func:`driver_errors`: opening the environment
(:func:`open_env`, :func:`open_reader`, and the store's first transaction),
every write transaction (:func:`write_transaction`) and every read
transaction (:func:`read_transaction`). A full map becomes :class:`MapFull`
(a :class:`StorageFull`: the store grows the map and tries again, up to
``--max-map-size``); a full disk during a commit (ENOSPC, EDQUOT, or the
EIO LMDB reports for a short write, when the volume has no space left)
becomes :class:`StorageFull`, recoverable: LMDB aborts the transaction, so
nothing of the group is written and the acknowledged state stays as it was
(``tests/test_disk_pressure.py`` fills real file systems); a damaged page (LMDB's
``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``, ``MDB_INVALID`` on a page it
walks) becomes :class:`Corruption` through ``corruption.found``, so a
client gets ``DATA_LOSS`` and the finding is counted, and so does a key or
value of the wrong size (a ``struct.error`` unpacking what LMDB returned);
any other driver error becomes :class:`StorageFailure`. Nothing else in the package catches
``lmdb.Error`` (``tests/test_lmdb_txn.py`` checks that).

A failed checksum or a missing index entry is :class:`Corruption` too,
raised by the store's own checks (``records.py``, ``lmdb_reads.py``).

Growing the map
===============

``mdb_env_set_mapsize`` remaps the file: no transaction of this process may
be open meanwhile (a reader thread's pages would go away under it). Every
transaction of the store holds its :class:`MapGate` shared, and
:func:`resize` takes it alone. Another process that grew the map past this
one's size makes LMDB refuse this one's next transaction with
``MDB_MAP_RESIZED``; each kind of transaction here then adopts the size
from the meta page (``set_mapsize(0)``, under the gate) and begins again.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from lighthouse_store import corruption, integrity, lmdb_format
from lighthouse_store.errors import MapFull, StorageFailure, StorageFull, StoreError

__all__ = [
    "OPEN_FAILED",
    "READ_FAILED",
    "WRITE_FAILED",
    "MapGate",
    "WriteLock",
    "driver_errors",
    "env_info",
    "open_env",
    "open_reader",
    "read_transaction",
    "resize",
    "storage_full",
    "translated",
    "write_transaction",
]

OPEN_FAILED = "cannot open the LMDB environment"
WRITE_FAILED = "storage write failed"
READ_FAILED = "storage read failed"

# What LMDB says when a page it reads is not what it wrote there.
_DAMAGED = (lmdb.CorruptedError, lmdb.PageNotFoundError)


# A volume with less than this free for unprivileged users is full: an EIO
# from LMDB's short write of a commit is then the disk filling up.
FULL_VOLUME_BYTES = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = tuple(os.strerror(e) for e in _DISK_FULL)


def storage_full() -> StorageFull:
    return StorageFull(
        "the store's LMDB map is at --max-map-size; appends are taken again once it is raised"
        " (restart with a larger --max-map-size)"
    )


def disk_full() -> StorageFull:
    return StorageFull(
        "the data volume is full; nothing of the append was written, and appends are taken"
        " again once space is freed"
    )


def _volume_full(env: Any) -> bool:
    try:
        vfs = os.statvfs(env.path())
    except (OSError, lmdb.Error):
        return False
    return vfs.f_bavail * vfs.f_frsize < FULL_VOLUME_BYTES


class MapGate:
    """Shared by every transaction of one environment in this process (and
    by reads of its meta page, :func:`env_info`), taken alone by
    :func:`resize`: a remap never happens under an open transaction. A
    resize waiting keeps new holders out until it is done; a thread that
    holds the gate may take it again (nested) without waiting."""

    __slots__ = ("_cond", "_lock", "_mine", "_open", "_resizing")

    def __init__(self) -> None:
        # Held through ``with self._lock`` (C-level) on the hot path; the
        # condition on the same lock only when someone has to wait.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._open = 0
        self._resizing = False
        self._mine = threading.local()

    def enter(self) -> None:
        mine = self._mine
        held = getattr(mine, "held", 0)
        with self._lock:
            while self._resizing and not held:
                self._cond.wait()
            self._open += 1
        mine.held = held + 1

    def leave(self) -> None:
        self._mine.held -= 1
        with self._lock:
            self._open -= 1
            if self._resizing and not self._open:
                self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        if getattr(self._mine, "held", 0):
            raise StorageFailure("cannot grow the LMDB map: this thread has a transaction open")
        with self._lock:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._open:
                self._cond.wait()
        try:
            yield
        finally:
            with self._lock:
                self._resizing = False
                self._cond.notify_all()


def env_info(env: Any, gate: MapGate) -> dict[str, int]:
    """LMDB's ``env.info()`` (read from the mapped meta page), never during a remap."""
    gate.enter()
    try:
        return env.info()  # type: ignore[no-any-return]
    finally:
        gate.leave()


def resize(env: Any, gate: MapGate, size: int = 0) -> int:
    """Remap ``env`` to ``size`` bytes, or to the size in its newest meta
    page (another process's growth) with 0; the size now. Call it with no
    transaction of this process open (the gate waits for the others)."""
    with gate.alone(), driver_errors(WRITE_FAILED):
        env.set_mapsize(0)  # adopt another process's growth first: never shrink below it
        if size > int(env.info()["map_size"]):
            env.set_mapsize(size)
        return int(env.info()["map_size"])


def _begin(env: Any, gate: MapGate | None, write: bool) -> Any:
    """A transaction, the gate held; adopts another process's larger map."""
    while True:
        if gate is not None:
            gate.enter()
        try:
            return env.begin(write=write)
        except lmdb.MapResizedError:
            if gate is not None:
                gate.leave()
                resize(env, gate)
            else:  # a tool's environment: one thread, nothing else open
                env.set_mapsize(0)
        except BaseException:
            if gate is not None:
                gate.leave()
            raise


@contextmanager
def driver_errors(failed: str, *, for_operator: bool = False) -> Iterator[None]:
    """Raise the block's LMDB driver errors as domain errors (:func:`translated`)."""
    try:
        yield
    except (lmdb.Error, struct.error) as exc:
        raise translated(exc, failed, for_operator=for_operator) from exc


def translated(
    exc: lmdb.Error | struct.error, failed: str, *, for_operator: bool = False
) -> StoreError:
    """The domain error for a driver error: a full map is :func:`storage_full`,
    a damaged page :class:`Corruption` (reported), any other
    ``StorageFailure("<failed>: <what>")``. ``what`` is the driver's own
    message (which may name files) only ``for_operator``; clients get the
    error's class name. A ``struct.error`` is a key or value of the wrong
    size, which LMDB handed over as stored (a damaged page): Corruption."""
    if isinstance(exc, struct.error):
        return corruption.found(
            corruption.INDEX, None,
            "a stored key or value has the wrong size; run lighthouse-store verify",
        )  # fmt: skip
    if isinstance(exc, lmdb.MapFullError):
        return MapFull(storage_full().message)
    if isinstance(exc, lmdb.DiskError) or str(exc).endswith(_DISK_FULL_TEXT):
        return disk_full()
    if isinstance(exc, _DAMAGED):
        return corruption.found(
            corruption.BTREE, None,
            f"the store's pages are damaged (LMDB: {type(exc).__name__}); "
            "run lighthouse-store verify",
        )  # fmt: skip
    what = str(exc) if for_operator else type(exc).__name__
    return StorageFailure(f"{failed}: {what}")


def open_env(path: Path, *, map_size: int, durable: bool, max_readers: int) -> Any:
    """The store's LMDB environment. ``durable``: every commit flushes its
    data pages before writing the meta page (fsync durability); the meta page
    itself is flushed after the commit, outside LMDB's write
    lock (``write_transaction(flush=True)``, ``MDB_NOMETASYNC``;
    ``lmdb_store.py`` says why)."""
    with driver_errors(OPEN_FAILED, for_operator=True):
        return lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=lmdb_format.MAX_DBS,
            max_readers=max_readers,
            sync=durable,
            metasync=False,
            readahead=False,
        )


def open_reader(path: Path, *, lock: bool = True) -> Any:
    """An environment opened read-only, for the tools that read a store
    (verify, stats, backup), whether or not a daemon runs on it: LMDB
    readers never wait for its writers. ``lock`` False for a copy no daemon
    can have open (a backup): nothing is written beside it then. The map is
    as large as the store's writer made it (its meta page says), so the
    reader sees the store's size as the daemon does, and keeps up with a
    store that grows while it reads."""
    pages = integrity.read_meta_pages(path / "data.mdb")
    map_size = integrity.newest_meta(pages).map_size if pages else 0
    with driver_errors(OPEN_FAILED, for_operator=True):
        return lmdb.open(
            str(path), readonly=True, create=False, lock=lock, map_size=max(map_size, 1 << 20),
            max_dbs=lmdb_format.MAX_DBS, readahead=False,
        )  # fmt: skip


class read_transaction:  # named as a function: ``with read_transaction(env) as txn``
    """A read transaction, its driver errors translated (:func:`translated`),
    ``gate`` held (the store's; None for a tool's own environment). A class,
    not a generator: every page of every read opens one."""

    __slots__ = ("_env", "_gate", "_txn")

    def __init__(self, env: Any, gate: MapGate | None = None) -> None:
        self._env = env
        self._gate = gate
        self._txn: Any = None

    def __enter__(self) -> Any:
        with driver_errors(READ_FAILED):
            self._txn = _begin(self._env, self._gate, False)
        return self._txn

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self._txn.abort()
        if self._gate is not None:
            self._gate.leave()
        if isinstance(exc, lmdb.Error | struct.error):
            raise translated(exc, READ_FAILED) from exc


class WriteLock:
    """LMDB's own write lock, held by an empty write transaction: entered, no
    process (this one included) can begin a write transaction until it is
    left. The supervisor's preallocator holds it around each write of zeros
    (``prealloc.py``): one lock orders it against every worker's commits.
    While it is held the used size (``env.info()["last_pgno"]``, read from the
    newest meta page) cannot change."""

    def __init__(self, env: Any, gate: MapGate | None = None) -> None:
        self._env = env
        self._gate = gate
        self._txn: Any = None

    def __enter__(self) -> None:
        with driver_errors(WRITE_FAILED):
            self._txn = _begin(self._env, self._gate, True)  # py-lmdb waits without the GIL

    def __exit__(self, *exc: object) -> None:
        txn, self._txn = self._txn, None
        txn.abort()
        if self._gate is not None:
            self._gate.leave()


@contextmanager
def write_transaction(
    env: Any,
    file_lock: threading.Lock,
    *,
    gate: MapGate | None = None,
    flush: bool = False,
    timed: Callable[[float], None] | None = None,
) -> Iterator[Any]:
    """A write transaction: committed if the block ends normally, aborted if
    it raises. ``file_lock`` is held from begin to commit or abort, not only
    around the commit: LMDB also writes pages before the commit when a
    transaction's dirty pages outgrow its list of them (``prealloc.py``).
    ``flush``: after the commit, with LMDB's write lock released but
    ``file_lock`` still held (so no step of zeros lands in between), flush the
    file (``fdatasync``), the commit's meta page included; py-lmdb waits
    without the GIL. ``timed``: called with the seconds spent writing the
    transaction to the file and flushing it (LMDB's commit and the flush).
    A commit that fails for a full disk is :func:`disk_full`, recoverable:
    LMDB aborted it, so nothing of it is on disk."""
    with file_lock, driver_errors(WRITE_FAILED):
        txn = _begin(env, gate, True)
        try:
            try:
                yield txn
                started = time.perf_counter()
                txn.commit()
            except lmdb.Error as exc:
                txn.abort()
                if _is_eio(exc) and _volume_full(env):
                    raise disk_full() from exc
                raise
            except BaseException:
                txn.abort()
                raise
        finally:
            if gate is not None:
                gate.leave()
        if flush:
            env.sync(True)
        if timed is not None:
            timed(time.perf_counter() - started)


def _is_eio(exc: lmdb.Error) -> bool:
    # LMDB reports a short write (the disk filled up under it) as EIO.
    return str(exc).endswith(os.strerror(errno.EIO))
