"""The one write path: a group-commit writer in front of ``EventStore.commit``.

Append RPCs queue here; one task takes everything queued (up to
``max_batch_appends`` appends / ``max_batch_bytes`` bytes), commits it in one
transaction with one fsync on a dedicated thread, then answers each caller.
While a commit runs, new appends queue up and form the next group, so the
fsync cost is shared by everyone who arrived meanwhile (as etcd's WAL and
KurrentDB's writer do). The queue is bounded by count and bytes: beyond that
an append fails at once with :class:`Overloaded` instead of growing memory.

Consumer checkpoints (subscription acks) take the same path: the latest
position per consumer waits in memory and rides along with the next group,
or, when no append comes, with a checkpoint-only commit at most every
``checkpoint_delay`` seconds, so acks never cost an fsync each.

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
from lighthouse_store.faults import Faults
from lighthouse_store.store import AppendCommand, AppendResult, EventStore

log = logging.getLogger("lighthouse_store.writer")

_Item = tuple[AppendCommand, "asyncio.Future[AppendResult]"]
_FLUSH = "flush"  # queue marker: commit pending checkpoints
_STOP = "stop"  # queue marker: drain and stop


@dataclass(frozen=True, slots=True)
class CommitInfo:
    head: int  # head position after the commit
    appends: int  # appends in the group (including failed ones)
    checkpoints: dict[str, int]  # consumer checkpoints stored by this commit
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
        checkpoint_delay: float = 0.05,
        faults: Faults | None = None,
    ) -> None:
        self._store = store
        self._faults = faults or Faults()
        self._max_queue = max_queue
        self._max_queued_bytes = max_queued_bytes
        self._max_batch_appends = max_batch_appends
        self._max_batch_bytes = max_batch_bytes
        self._checkpoint_delay = checkpoint_delay
        self._queue: asyncio.Queue[_Item | str] = asyncio.Queue()
        self._queued_bytes = 0
        self._checkpoints: dict[str, int] = {}
        self._flush_scheduled = False
        self._listeners: list[CommitListener] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="lighthouse-writer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_refusal = 0.0

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")

    def refuse_new(self) -> None:
        """From now on appends fail at once with ShuttingDown (UNAVAILABLE)."""
        self._closing = True

    def quiet_for(self, seconds: float) -> bool:
        """Nothing queued and no append refused for ``seconds`` (drain is done)."""
        return self._queue.empty() and time.monotonic() - self._last_refusal >= seconds

    async def stop(self) -> None:
        """Refuse new appends, commit everything already queued, then stop."""
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(_STOP)
            await self._task
            self._task = None
        self._executor.shutdown(wait=True)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def append(self, command: AppendCommand) -> AppendResult:
        if self._closing:
            self._last_refusal = time.monotonic()
            raise ShuttingDown("the store is shutting down; retry later")
        if (
            self._queue.qsize() >= self._max_queue
            or self._queued_bytes + command.size > self._max_queued_bytes
        ):
            raise Overloaded("too many appends queued; retry shortly", retry_after_ms=50)
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queued_bytes += command.size
        self._queue.put_nowait((command, future))
        return await future

    def checkpoint(self, consumer: str, position: int) -> None:
        """Store a consumer's position with the next commit (listeners hear when)."""
        if position <= self._checkpoints.get(consumer, -1):
            return
        self._checkpoints[consumer] = position
        if not self._flush_scheduled and not self._closing:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(
                self._checkpoint_delay, self._queue.put_nowait, _FLUSH
            )

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Item] = []
            size = 0
            item: _Item | str | None = first
            while item is not None:
                if item == _STOP:
                    stopping = True
                elif isinstance(item, tuple):
                    batch.append(item)
                    size += item[0].size
                if len(batch) >= self._max_batch_appends or size >= self._max_batch_bytes:
                    break
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = None
            self._queued_bytes -= size
            if batch or self._checkpoints:
                await self._commit(batch)

    def _requeue(self, checkpoints: dict[str, int]) -> dict[str, int]:
        """Put back checkpoints whose commit failed (unless newer ones came)."""
        for consumer, position in checkpoints.items():
            self._checkpoints[consumer] = max(position, self._checkpoints.get(consumer, -1))
        return {}

    async def _commit(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        checkpoints, self._checkpoints = self._checkpoints, {}
        self._flush_scheduled = False
        commands = [command for command, _ in batch]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, self._store.commit, commands, checkpoints
            )
        except StoreError as exc:
            log.error("group commit of %d appends failed: %s", len(batch), exc.message)
            results = [exc] * len(batch)
            checkpoints = self._requeue(checkpoints)
        except Exception:
            log.exception("group commit of %d appends failed", len(batch))
            results = [StorageFailure("storage write failed")] * len(batch)
            checkpoints = self._requeue(checkpoints)
        info = CommitInfo(
            self._store.head_position(), len(batch), checkpoints, time.perf_counter() - started
        )
        self._faults.after_commit(len(batch))
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
