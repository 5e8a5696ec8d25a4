"""StoreClient: the synchronous client, a thin facade over AsyncStoreClient.

One implementation of every behaviour (retries, degraded mode, resumable
subscriptions) lives in the async client; this one runs it on a private
event loop in a daemon thread and blocks for each result. It is safe to use
from several threads at once.
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from lighthouse_client._subscription import AsyncSubscription, Start
from lighthouse_client._types import (
    ANY,
    AppendResult,
    EventResult,
    ExpectedRevision,
    Filter,
    NewEvent,
    ReadResult,
    RecordedEvent,
    StoreInfo,
)
from lighthouse_client.aio import DEFAULT_TARGET, AsyncStoreClient

T = TypeVar("T")


class _LoopThread:
    """One event loop in a daemon thread, shared by every StoreClient of the
    process. grpc.aio binds its completion-queue poller to each loop it sees
    and keeps notifying it, so loops are never closed here: one long-lived
    loop instead of one per client."""

    _shared: _LoopThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="lighthouse-client", daemon=True
        )
        self._thread.start()

    @classmethod
    def shared(cls) -> _LoopThread:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """``coro``'s result, run as a task on the loop; blocks until it is done.

        (Leaner than ``asyncio.run_coroutine_threadsafe``, which chains a
        ``concurrent.futures.Future`` to the task: a lock released by the task's
        done-callback; measured in perf/RESULTS.md, "Client library cost".)"""
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("a blocking StoreClient call from inside its own event loop")
        done = _thread.allocate_lock()
        done.acquire()
        ran: list[asyncio.Task[T] | BaseException] = []

        def start() -> None:
            try:
                task = self.loop.create_task(coro)
            except BaseException as exc:  # (not a coroutine, say): the caller raises it
                ran.append(exc)
                done.release()
                return
            ran.append(task)
            task.add_done_callback(lambda _: done.release())

        self.loop.call_soon_threadsafe(start)
        done.acquire()
        outcome = ran[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome.result()


class StoreClient:
    """Blocking client; takes the same arguments as :class:`AsyncStoreClient`."""

    def __init__(self, target: str = DEFAULT_TARGET, **kwargs: Any) -> None:
        self._loop = _LoopThread.shared()
        self._async = AsyncStoreClient(target, **kwargs)
        self._closed = False

    @property
    def aio(self) -> AsyncStoreClient:
        return self._async

    def append(
        self,
        stream: str,
        events: NewEvent | Sequence[NewEvent],
        expected_revision: ExpectedRevision = ANY,
        *,
        timeout: float | None = None,
    ) -> AppendResult:
        """As :meth:`AsyncStoreClient.append`: with an outbox, queued behind what
        the daemon cannot take yet, or raising a restart-required error."""
        return self._loop.run(
            self._async.append(stream, events, expected_revision, timeout=timeout)
        )

    def read_stream(
        self,
        stream: str,
        *,
        from_revision: int | None = None,
        backwards: bool = False,
        max_count: int = 0,
        timeout: float | None = None,
    ) -> ReadResult:
        return self._loop.run(
            self._async.read_stream(
                stream,
                from_revision=from_revision,
                backwards=backwards,
                max_count=max_count,
                timeout=timeout,
            )
        )

    def read_all(
        self,
        *,
        from_position: int | None = None,
        backwards: bool = False,
        max_count: int = 0,
        filter: Filter | None = None,
        from_time: datetime | None = None,
        to_time: datetime | None = None,
        timeout: float | None = None,
    ) -> ReadResult:
        return self._loop.run(
            self._async.read_all(
                from_position=from_position,
                backwards=backwards,
                max_count=max_count,
                filter=filter,
                from_time=from_time,
                to_time=to_time,
                timeout=timeout,
            )
        )

    def get_event(self, event_id: str, *, timeout: float | None = None) -> EventResult:
        return self._loop.run(self._async.get_event(event_id, timeout=timeout))

    def info(self, *, timeout: float | None = None) -> StoreInfo:
        return self._loop.run(self._async.info(timeout=timeout))

    def flush_outbox(self, *, timeout: float | None = None) -> int:
        """As :meth:`AsyncStoreClient.flush_outbox`."""
        return self._loop.run(self._async.flush_outbox(timeout=timeout))

    def subscribe(
        self,
        *,
        start: Start = "start",
        consumer: str | None = None,
        filter: Filter | None = None,
        window: int = 1000,
        heartbeat: float = 5.0,
        reconnect_timeout: float | None = None,
    ) -> Subscription:
        sub = self._async.subscribe(
            start=start,
            consumer=consumer,
            filter=filter,
            window=window,
            heartbeat=heartbeat,
            reconnect_timeout=reconnect_timeout,
        )
        return Subscription(sub, self._loop)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.run(self._async.close())

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription(Iterator[RecordedEvent]):
    """Blocking iterator over an :class:`AsyncSubscription`."""

    def __init__(self, inner: AsyncSubscription, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop

    def __next__(self) -> RecordedEvent:
        try:
            return self._loop.run(self._inner.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    @property
    def caught_up(self) -> bool:
        return self._inner.caught_up

    @property
    def last_position(self) -> int | None:
        return self._inner.last_position

    @property
    def reconnects(self) -> int:
        return self._inner.reconnects

    def lag(self) -> int:
        return self._loop.run(self._inner.lag())

    def ack(self, position: int | RecordedEvent) -> None:
        self._loop.run(self._inner.ack(position))

    def close(self, flush_timeout: float = 5.0) -> None:
        self._loop.run(self._inner.close(flush_timeout))

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
