"""The one write path: a group-commit writer in front of ``EventStore.commit``.

Append RPCs queue here; one dedicated thread takes everything queued (up to
``max_batch_appends`` appends / ``max_batch_bytes`` bytes), commits it in one
transaction with one fsync, then hands the results back to the event loop in
one callback, which answers each caller. While a commit runs, new appends
queue up and form the next group, so the fsync cost is shared by everyone
who arrived meanwhile (as etcd's WAL and KurrentDB's writer do). The queue is
bounded by count and bytes: beyond that an append fails at once with
:class:`Overloaded` instead of growing memory.

The hand-off is a ``queue.SimpleQueue`` (the thread blocks in C, without the
GIL) and one ``call_soon_threadsafe`` per group: no executor, no per-append
thread hop.

Consumer checkpoints (subscription acks) take the same path: the latest
position per consumer waits in memory and rides along with the next group,
or, when no append comes, with a checkpoint-only commit at most every
``checkpoint_delay`` seconds, so acks never cost an fsync each.

Commit timing, metrics and fault hooks belong here and nowhere else. Each
``EventStore.commit`` (transaction and fsync) is timed in one place,
``_commit``, and the time goes with the group's size and the new head in a
:class:`CommitInfo` to the listeners, which run on the event loop after every
commit: the subscription fan-out hangs off that call, and it is where metrics
of commit durations and batch sizes are to be taken, not in the commit.
``faults.after_commit`` runs on the writer thread between the durable commit
and the answers. Besides the listeners, ``on_busy`` is called (on the event
loop) when an append arrives at an empty queue: with the listeners, that is
what the health check needs to see a writer that stopped committing
(``metrics.py``, ``health.py``).

The degradation controller's events (``degradation.py``) go through
:meth:`GroupCommitWriter.commit_first`: from any thread, one append committed
in a transaction of its own before the next group, however many appends are
queued, and announced and heard by the listeners like any commit.

With several worker processes, ``announce`` (``wakeups.Wakeups.announce``)
runs on the writer thread right after each commit that wrote events,
before the answers and the listeners: the other workers' subscriptions
wake as soon as the events are durable, without waiting for this worker's
event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from lighthouse_store.errors import (
    Overloaded,
    ShuttingDown,
    SpacePressure,
    StorageFailure,
    StorageFull,
    StoreError,
)
from lighthouse_store.faults import Faults
from lighthouse_store.store import AppendCommand, AppendResult, EventStore
from lighthouse_store.threads import name_os_thread

log = logging.getLogger("lighthouse_store.writer")

_Item = tuple[AppendCommand, "asyncio.Future[AppendResult]"]
_FLUSH = "flush"  # queue marker: commit pending checkpoints
_STOP = "stop"  # queue marker: drain and stop
_FIRST = "first"  # queue marker: a commit_first is waiting


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What listeners hear after each group commit, failed or not."""

    head: int  # head position after the commit
    appends: int  # appends in the group (including failed ones)
    checkpoints: dict[str, int]  # consumer checkpoints stored by this commit
    seconds: float  # time spent in EventStore.commit (transaction + fsync)
    events: int = 0  # events written (an idempotent retry writes none)
    bytes: int = 0  # of the events written (AppendCommand.size)
    flush_seconds: float = 0.0  # of ``seconds``, writing to disk and flushing
    # Appends refused because storage could not take them (a full map or
    # disk, a failed write): while the newest commit refused any, writes are
    # blocked. Refusals by the marks (SpacePressure) are not counted: the
    # space guard's own state says when they end (DaemonMetrics.space_full).
    refused_by_storage: int = 0


CommitListener = Callable[[CommitInfo], None]
_FirstItem = tuple[AppendCommand, "concurrent.futures.Future[AppendResult | StoreError]"]


class GroupCommitWriter:
    def __init__(
        self,
        store: EventStore,
        *,
        max_queue: int,
        max_queued_bytes: int,
        max_batch_appends: int,
        max_batch_bytes: int,
        checkpoint_delay: float,
        faults: Faults | None = None,
        announce: Callable[[], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._faults = faults or Faults()
        self._announce = announce
        self._on_busy = on_busy
        self._max_queue = max_queue
        self._max_queued_bytes = max_queued_bytes
        self._max_batch_appends = max_batch_appends
        self._max_batch_bytes = max_batch_bytes
        self._checkpoint_delay = checkpoint_delay
        self._inbox: queue.SimpleQueue[_Item | str] = queue.SimpleQueue()
        # Owned by the event loop thread:
        self._pending = 0  # appends queued or being committed
        self._owners: dict[str, int] = {}  # appends queued or being committed, per owner
        self._owner_of: dict[asyncio.Future[AppendResult], str] = {}
        self._pending_bytes = 0
        self._listeners: list[CommitListener] = []
        self._closing = False
        self._last_refusal = 0.0
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Shared with the writer thread:
        self._checkpoints: dict[str, int] = {}
        self._checkpoints_lock = threading.Lock()
        self._first: collections.deque[_FirstItem] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="lh-writer", daemon=True)

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    @property
    def pending(self) -> int:
        """Appends queued or being committed (read it on the event loop)."""
        return self._pending

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def refuse_new(self) -> None:
        """From now on appends fail at once with ShuttingDown (UNAVAILABLE)."""
        self._closing = True

    def quiet_for(self, seconds: float) -> bool:
        """Nothing queued and no append refused for ``seconds`` (drain is done)."""
        return self._pending == 0 and time.monotonic() - self._last_refusal >= seconds

    async def stop(self) -> None:
        """Refuse new appends, commit everything already queued, then stop."""
        self._closing = True
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            await asyncio.sleep(0)  # run the last batch's answers

    async def append(self, command: AppendCommand, owner: str = "") -> AppendResult:
        """Queue ``command`` and wait for its commit. ``owner`` (the principal's
        key) may hold at most its share of the queue: ``max_queue`` over the
        other owners with appends queued plus two, so that a client flooding
        alone leaves half the queue to the next one, and however many flood,
        one more finds room (a count share; bytes are bounded in all only,
        since one append may be as large as the whole byte bound)."""
        if self._closing:
            self._last_refusal = time.monotonic()
            raise ShuttingDown("the store is shutting down; retry later")
        if (
            self._pending >= self._max_queue
            or self._pending_bytes + command.size > self._max_queued_bytes
        ):
            raise Overloaded("too many appends queued; retry shortly", retry_after_ms=50)
        owners = self._owners
        mine = owners.get(owner, 0)
        share = max(1, self._max_queue // (len(owners) - (1 if mine else 0) + 2))
        if mine >= share:
            raise Overloaded(f"this client has {mine} appends queued, its share of the queue;"
                             " retry shortly", retry_after_ms=50)  # fmt: skip
        assert self._loop is not None, "writer not started"
        future: asyncio.Future[AppendResult] = self._loop.create_future()
        # Counted until the append is answered, not until its caller stops
        # waiting: a caller that gives up leaves its append in the queue.
        owners[owner] = mine + 1
        self._owner_of[future] = owner
        if self._pending == 0 and self._on_busy is not None:
            self._on_busy()
        self._pending += 1
        self._pending_bytes += command.size
        self._inbox.put((command, future))
        return await future

    def commit_first(
        self, command: AppendCommand
    ) -> concurrent.futures.Future[AppendResult | StoreError]:
        """From any thread: commit ``command`` alone, durably, before any
        group not yet begun; the future holds its result or its error."""
        future: concurrent.futures.Future[AppendResult | StoreError] = concurrent.futures.Future()
        self._first.append((command, future))
        self._inbox.put(_FIRST)
        return future

    def checkpoint(self, consumer: str, position: int) -> None:
        """Store a consumer's position with the next commit (listeners hear when)."""
        with self._checkpoints_lock:
            if position <= self._checkpoints.get(consumer, -1):
                return
            self._checkpoints[consumer] = position
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._closing and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_later(self._checkpoint_delay, self._flush_soon)

    def _flush_soon(self) -> None:
        # Checkpoints set from here on schedule another flush; those set before
        # are in this one (or rode along with an append group already).
        self._flush_scheduled = False
        self._inbox.put(_FLUSH)

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        name_os_thread()
        stopping = False
        while not stopping:
            item: _Item | str | None = self._inbox.get()
            while self._first:  # ahead of the group about to form
                self._commit_first(*self._first.popleft())
            batch: list[_Item] = []
            size = 0
            while item is not None:
                if item == _STOP:
                    stopping = True
                elif isinstance(item, tuple):
                    batch.append(item)
                    size += item[0].size
                if len(batch) >= self._max_batch_appends or size >= self._max_batch_bytes:
                    break
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            with self._checkpoints_lock:
                checkpoints, self._checkpoints = self._checkpoints, {}
            if batch or checkpoints:
                self._commit(batch, size, checkpoints)

    def _commit(self, batch: list[_Item], size: int, checkpoints: dict[str, int]) -> None:
        started = time.perf_counter()
        try:
            results = self._store.commit([command for command, _ in batch], checkpoints)
        except StoreError as exc:
            log.error("group commit of %d appends failed: %s", len(batch), exc.message)
            results = [exc] * len(batch)
            checkpoints = self._requeue(checkpoints)
        except Exception:
            log.exception("group commit of %d appends failed", len(batch))
            results = [StorageFailure("storage write failed")] * len(batch)
            checkpoints = self._requeue(checkpoints)
        seconds = time.perf_counter() - started
        events = size_written = refused = 0
        for (command, _), result in zip(batch, results, strict=True):
            if isinstance(result, AppendResult):
                if not result.duplicate:
                    events += len(command.event_ids)
                    size_written += command.size
            elif isinstance(result, StorageFull | StorageFailure) and not isinstance(
                result, SpacePressure
            ):
                refused += 1
        info = CommitInfo(
            self._store.head_position(), len(batch), checkpoints, seconds,
            events, size_written, self._store.flush_seconds(), refused,
        )  # fmt: skip
        if (
            self._announce is not None
            and not self._faults.drop_wakeups
            and any(isinstance(r, AppendResult) and not r.duplicate for r in results)
        ):
            self._announce()
        self._faults.after_commit(len(batch))
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._finish, batch, size, results, info)

    def _commit_first(
        self,
        command: AppendCommand,
        future: concurrent.futures.Future[AppendResult | StoreError],
    ) -> None:
        started = time.perf_counter()
        result: AppendResult | StoreError
        try:
            result = self._store.commit([command])[0]
        except StoreError as exc:
            result = exc
        except Exception:
            log.exception("the commit of a degradation event failed")
            result = StorageFailure("storage write failed")
        if isinstance(result, AppendResult) and not result.duplicate:
            info = CommitInfo(
                self._store.head_position(), 0, {}, time.perf_counter() - started,
                len(command.event_ids), command.size, self._store.flush_seconds(),
            )  # fmt: skip
            if self._announce is not None:
                self._announce()
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._notify, info)
        future.set_result(result)

    def _requeue(self, checkpoints: dict[str, int]) -> dict[str, int]:
        """Put back checkpoints whose commit failed (unless newer ones came)."""
        with self._checkpoints_lock:
            for consumer, position in checkpoints.items():
                self._checkpoints[consumer] = max(position, self._checkpoints.get(consumer, -1))
        if checkpoints and self._loop is not None:
            self._loop.call_soon_threadsafe(self._schedule_flush)
        return {}

    # -- back on the event loop ------------------------------------------------

    def _finish(
        self,
        batch: list[_Item],
        size: int,
        results: list[AppendResult | StoreError],
        info: CommitInfo,
    ) -> None:
        self._pending -= len(batch)
        self._pending_bytes -= size
        owners = self._owners
        for (_, future), result in zip(batch, results, strict=True):
            owner = self._owner_of.pop(future)
            left = owners[owner] - 1
            if left:
                owners[owner] = left
            else:
                del owners[owner]
            if future.done():  # the caller went away; the append stands
                continue
            if isinstance(result, StoreError):
                future.set_exception(result)
            else:
                future.set_result(result)
        self._notify(info)

    def _notify(self, info: CommitInfo) -> None:
        for listener in self._listeners:
            try:
                listener(info)
            except Exception:
                log.exception("commit listener failed")
