"""Zero-filled space ahead of LMDB's write head.

Why
===

LMDB (without ``MDB_WRITEMAP``, as here) grows ``data.mdb`` by writing past
its end. Every commit that needs new pages then makes the file system
allocate blocks and change the file size, and the commit's ``fdatasync``
has to commit that metadata as well as the data. Writing into blocks that
are already allocated and written is a plain overwrite: nothing to allocate,
no size change to commit, and the pages are already in the page cache.
Databases do this for their logs (PostgreSQL zero-fills WAL segments, etcd
preallocates its WAL files). ``fallocate`` is not enough: it leaves
"unwritten" extents whose conversion on first write is again a metadata
change. Fsync'd commits are about 1.3x faster with it (``perf/RESULTS.md``).

The cost: every byte of the data file is written twice (zeros, then data),
and each new page of the file is fresh page-cache memory, which can be slow
to write: a big fill step can hold the file lock for milliseconds while a
commit waits. So the step adapts: a step whose write took over 1 ms halves
the next one (down to 64 KiB), a fast one doubles it (up to 1 MiB).
``0`` turns the filler off.

How
===

A daemon thread keeps the file at least ``ahead`` bytes longer than LMDB's
used size (``(last_pgno + 1) * page size``), appending zeros ``step`` bytes
at a time and, in fsync durability, syncing each step, so a commit's own
``fdatasync`` never has more than one step of zeros to flush besides its
pages. It checks every 20 ms while there is
filling to do, and backs off to every 0.32 s while there is none.

Why it is safe
==============

LMDB writes the file only during a write transaction: at its commit, and
before it when the transaction's dirty pages outgrow LMDB's list of them
(about 128K pages), in which case it writes some of them out early. The store
holds ``file_lock`` through every write transaction, from begin to commit or
abort (``lmdb_txn.write_transaction``), and the filler writes only while
holding it, and only at or past the current end of the file; so it never
writes where LMDB is writing or has written. The lock is in-process: it
relies on this daemon being the only writer of its data dir (``lock.py``).
With several worker processes (``supervisor.py``) the filler runs in the
supervisor and holds LMDB's own write lock instead (``lmdb_txn.WriteLock``,
an empty write transaction), which keeps every worker's write transactions
out in the same way, and keeps the used size still while the filler reads it.
The space past ``last_pgno`` is invisible to LMDB: it reads only pages it has
written, sizes its map from its meta page, and a copy (``mdb_env_copy``)
stops at the last page. After a crash it may hold a few more zero pages, or
pages of a transaction that never committed: equally invisible, and
overwritten as the store grows.

Limits
======

The filler never makes the file longer than ``limit(end)`` says: the
store's limit (``LmdbEventStore._fill_limit``) is the LMDB map size (LMDB
never writes past it, so zeros there are waste) and the point where the
data volume would be 80% used (``space.WARN_RATIO``, SPEC §4's warning
mark): preallocated zeros never push a volume into warning, nor towards the
95% where appends are refused. A 20 MiB volume with a 64 MiB
``--preallocate`` gets zeros up to 80% of it, and no further.

The filler never fails a commit: if a write fails (a full disk, say), it logs
it once and tries again later, and meanwhile LMDB grows the file itself, as
it would without a filler.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from lighthouse_store.errors import StoreError
from lighthouse_store.threads import name_os_thread

log = logging.getLogger("lighthouse_store.prealloc")

STEP = 1024 * 1024
MIN_STEP = 64 * 1024
# A step whose write held the lock longer than this halves the next one (a
# commit may be waiting); a fast one doubles it again, up to ``step``.
SLOW_STEP_S = 0.001
INTERVAL_S = 0.02
# With nothing to fill, each check waits twice as long as the last, up to
# this: an idle daemon checks (an fstat, a statvfs, LMDB's info) 3 times a
# second, not 50, and a busy one as often as it fills. ``ahead`` covers the
# writes of that wait many times over.
IDLE_INTERVAL_S = 0.32
RETRY_AFTER_ERROR_S = 5.0


class Preallocator:
    """Keeps ``path`` zero-filled ``ahead`` bytes past ``used_bytes()``."""

    def __init__(
        self,
        path: Path,
        *,
        ahead: int,
        used_bytes: Callable[[], int],
        file_lock: AbstractContextManager[object],
        sync: bool,
        step: int = STEP,
        interval_s: float = INTERVAL_S,
        idle_interval_s: float = IDLE_INTERVAL_S,
        retry_after_s: float = RETRY_AFTER_ERROR_S,
        clock: Callable[[], float] = time.perf_counter,
        limit: Callable[[int], int] | None = None,
    ) -> None:
        self._ahead = ahead
        self._limit = limit
        self._used_bytes = used_bytes
        self._lock = file_lock
        self._sync = sync
        self._zeros = memoryview(bytes(step))
        self._step = step
        self._clock = clock
        self._interval = interval_s
        self._idle_interval = max(interval_s, idle_interval_s)
        self._retry_after = retry_after_s
        self._stop = threading.Event()
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="lh-prealloc", daemon=True)
        self.failed = False  # the last fill attempt failed (a full disk, say)

    def start(self) -> Preallocator:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop filling (after at most the current step) and close the file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def fill(self) -> int:
        """Append zero steps until the file is ``ahead`` past the used size
        (or asked to stop); return the bytes added. Raises OSError."""
        added = 0
        while not self._stop.is_set():
            with self._lock:  # no write transaction is open, in any process
                end = os.fstat(self._fd).st_size
                target = self._used_bytes() + self._ahead
                if self._limit is not None:
                    target = min(target, self._limit(end))
                if end >= target:
                    return added
                started = self._clock()
                size = min(self._step, target - end)
                written = os.pwrite(self._fd, self._zeros[:size], end)
                held = self._clock() - started
            if held > SLOW_STEP_S:
                self._step = max(MIN_STEP, self._step // 2)
            elif held < SLOW_STEP_S / 4:
                self._step = min(len(self._zeros), self._step * 2)
            if self._sync:
                os.fdatasync(self._fd)
            added += written
        return added

    def _run(self) -> None:
        name_os_thread()
        wait = self._interval
        while not self._stop.wait(wait):
            try:
                added = self.fill()
            except (OSError, StoreError) as exc:  # StoreError: LMDB's write lock (WriteLock)
                if not self.failed:
                    errno = 0 if isinstance(exc, StoreError) else exc.errno or 0
                    what = exc.message if isinstance(exc, StoreError) else os.strerror(errno)
                    log.warning(
                        "cannot preallocate the data file (%s); retrying later",
                        what or type(exc).__name__,
                    )
                self.failed = True
                wait = self._retry_after
                continue
            if self.failed:
                log.info("preallocating the data file again")
            self.failed = False
            wait = self._interval if added else min(2 * wait, self._idle_interval)
