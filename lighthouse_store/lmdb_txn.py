"""The one place LMDB driver errors become the store's own errors.

py-lmdb raises subclasses of ``lmdb.Error``; the rest of the daemon knows only
the domain errors of ``errors.py``. Every driver call whose failure the store
reports runs inside :func:`driver_errors`: opening the environment
(:func:`open_env`, and the store's first transaction) and every write
transaction (:func:`write_transaction`). A full map becomes
:class:`StorageFull` (nothing frees space in an append-only store: the
operator restarts with a larger ``--map-size``); any other driver error
becomes :class:`StorageFailure`. Nothing else in the package catches
``lmdb.Error`` (``tests/test_lmdb_txn.py`` checks that).

Read transactions are not wrapped: a driver error during a read reaches the
servicer as an unexpected error (INTERNAL with an incident id in the log),
while a failed checksum or a missing index entry is :class:`Corruption`,
raised by the store itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from lighthouse_store import lmdb_format
from lighthouse_store.errors import StorageFailure, StorageFull

OPEN_FAILED = "cannot open the LMDB environment"
WRITE_FAILED = "storage write failed"


def storage_full() -> StorageFull:
    return StorageFull(
        "the store is full (LMDB map size reached); restart the daemon with a larger --map-size"
    )


@contextmanager
def driver_errors(failed: str, *, for_operator: bool = False) -> Iterator[None]:
    """Raise the block's LMDB driver errors as domain errors: a full map as
    :func:`storage_full`, any other as ``StorageFailure("<failed>: <what>")``.
    ``what`` is the driver's own message (which may name files) only
    ``for_operator``; clients get the error's class name."""
    try:
        yield
    except lmdb.MapFullError:
        raise storage_full() from None
    except lmdb.Error as exc:
        what = str(exc) if for_operator else type(exc).__name__
        raise StorageFailure(f"{failed}: {what}") from exc


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
