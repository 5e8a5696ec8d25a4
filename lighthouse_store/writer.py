"""The one write path: a group-commit writer in front of ``EventStore.commit``.

Append RPCs queue here; one task takes everything queued (up to
``max_batch_appends`` appends / ``max_batch_bytes`` bytes), commits it in one
transaction with one fsync on a dedicated thread, then answers each caller.
While a commit runs, new appends queue up and form the next group, so the
fsync cost is shared by everyone who arrived meanwhile (as etcd's WAL and
KurrentDB's writer do). The queue is bounded by count and bytes: beyond that
an append fails at once with :class:`Overloaded` instead of growing memory.

Commit timing, metrics and fault hooks belong here and nowhere else:
:class:`CommitInfo` listeners run on the event loop after every commit (the
subscription fan-out hangs off this too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lighthouse_store.errors import Overloaded, ShuttingDown, StorageFailure, StoreError
from lighthouse_store.store import AppendCommand, AppendResult, EventStore

log = logging.getLogger("lighthouse_store.writer")

_Item = tuple[AppendCommand, "asyncio.Future[AppendResult]"]


@dataclass(frozen=True, slots=True)
class CommitInfo:
    head: int  # head position after the commit
    appends: int  # appends in the group (including failed ones)
    seconds: float  # time spent in EventStore.commit (transaction + fsync)


CommitListener = Callable[[CommitInfo], None]


class GroupCommitWriter:
    def __init__(
        self,
        store: EventStore,
        *,
        max_queue: int,
        max_queued_bytes: int,
        max_batch_appends: int,
        max_batch_bytes: int,
    ) -> None:
        self._store = store
        self._max_queue = max_queue
        self._max_queued_bytes = max_queued_bytes
        self._max_batch_appends = max_batch_appends
        self._max_batch_bytes = max_batch_bytes
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._queued_bytes = 0
        self._listeners: list[CommitListener] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lighthouse-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Refuse new appends, commit everything already queued, then stop."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(None)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def append(self, command: AppendCommand) -> AppendResult:
        if self._closing:
            raise ShuttingDown("the store is shutting down; retry on another node or later")
        if (
            self._queue.qsize() >= self._max_queue
            or self._queued_bytes + command.size > self._max_queued_bytes
        ):
            raise Overloaded("too many appends queued; retry shortly", retry_after_ms=50)
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queued_bytes += command.size
        self._queue.put_nowait((command, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            size = first[0].size
            while len(batch) < self._max_batch_appends and size < self._max_batch_bytes:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                size += item[0].size
            self._queued_bytes -= size
            commands = [command for command, _ in batch]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._store.commit, commands)
            except StoreError as exc:
                log.error("group commit of %d appends failed: %s", len(batch), exc.message)
                results = [exc] * len(batch)
            except Exception:
                log.exception("group commit of %d appends failed", len(batch))
                results = [StorageFailure("storage write failed")] * len(batch)
            info = CommitInfo(self._store.head_position(), len(batch),
                              time.perf_counter() - started)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the caller went away; the append stands
                    continue
                if isinstance(result, StoreError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
            for listener in self._listeners:
                try:
                    listener(info)
                except Exception:
                    log.exception("commit listener failed")
