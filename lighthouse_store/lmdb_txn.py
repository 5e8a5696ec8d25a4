"""The one place LMDB driver errors become the store's own errors.

py-lmdb raises subclasses of ``lmdb.Error``; the rest of the daemon knows only
the domain errors of ``errors.py``. Every driver call whose failure the store
reports runs inside :func:`driver_errors`: opening the environment
(:func:`open_env`, :func:`open_reader`, and the store's first transaction),
every write transaction (:func:`write_transaction`) and every read
transaction (:func:`read_transaction`). A full map becomes
:class:`StorageFull` (nothing frees space in an append-only store: the
operator restarts with a larger ``--map-size``); a damaged page (LMDB's
``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``, ``MDB_INVALID`` on a page it
walks) becomes :class:`Corruption` through ``corruption.found``, so a
client gets ``DATA_LOSS`` and the finding is counted, and so does a key or
value of the wrong size (a ``struct.error`` unpacking what LMDB returned);
any other driver error becomes :class:`StorageFailure`. Nothing else in the package catches
``lmdb.Error`` (``tests/test_lmdb_txn.py`` checks that).

A failed checksum or a missing index entry is :class:`Corruption` too,
raised by the store's own checks (``records.py``, ``lmdb_reads.py``).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from lighthouse_store import corruption, integrity, lmdb_format
from lighthouse_store.errors import StorageFailure, StorageFull, StoreError

OPEN_FAILED = "cannot open the LMDB environment"
WRITE_FAILED = "storage write failed"
READ_FAILED = "storage read failed"

# What LMDB says when a page it reads is not what it wrote there.
_DAMAGED = (lmdb.CorruptedError, lmdb.PageNotFoundError)


def storage_full() -> StorageFull:
    return StorageFull(
        "the store is full (LMDB map size reached); restart the daemon with a larger --map-size"
    )


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
        return storage_full()
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
    """A read transaction, its driver errors translated (:func:`translated`).
    A class, not a generator: every page of every read opens one."""

    __slots__ = ("_env", "_txn")

    def __init__(self, env: Any) -> None:
        self._env = env
        self._txn: Any = None

    def __enter__(self) -> Any:
        with driver_errors(READ_FAILED):
            self._txn = self._env.begin()
        return self._txn

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        self._txn.abort()
        if isinstance(exc, lmdb.Error | struct.error):
            raise translated(exc, READ_FAILED) from exc


class WriteLock:
    """LMDB's own write lock, held by an empty write transaction: entered, no
    process (this one included) can begin a write transaction until it is
    left. The supervisor's preallocator holds it around each write of zeros
    (``prealloc.py``): one lock orders it against every worker's commits.
    While it is held the used size (``env.info()["last_pgno"]``, read from the
    newest meta page) cannot change."""

    def __init__(self, env: Any) -> None:
        self._env = env
        self._txn: Any = None

    def __enter__(self) -> None:
        with driver_errors(WRITE_FAILED):
            self._txn = self._env.begin(write=True)  # py-lmdb waits without the GIL

    def __exit__(self, *exc: object) -> None:
        txn, self._txn = self._txn, None
        txn.abort()


@contextmanager
def write_transaction(
    env: Any,
    file_lock: threading.Lock,
    *,
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
    transaction to the file and flushing it (LMDB's commit and the flush)."""
    with file_lock, driver_errors(WRITE_FAILED):
        txn = env.begin(write=True)
        try:
            yield txn
            started = time.perf_counter()
            txn.commit()
        except BaseException:
            txn.abort()
            raise
        if flush:
            env.sync(True)
        if timed is not None:
            timed(time.perf_counter() - started)
