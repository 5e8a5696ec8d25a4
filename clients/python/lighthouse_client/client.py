"""StoreClient: the synchronous client, a thin facade over AsyncStoreClient.

One implementation of every behaviour (retries, degraded mode, resumable
subscriptions) lives in the async client; this one runs it and blocks for
each result: the unary calls on the calling thread over a synchronous channel
(``_direct.py``), subscriptions (and every call, with an outbox or tracing)
on a private event loop in a daemon thread. It is safe to use from several
threads at once.
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from lighthouse_client._direct import DirectClient, run_here
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
        # Where the unary calls run (_direct.py): on this thread, unless the
        # loop is needed (an outbox's flushes, tracing's grpc.aio interceptors).
        self._direct: DirectClient | None = None
        if kwargs.get("outbox") is None and not kwargs.get("tracing"):
            self._direct = DirectClient(self._async, kwargs.get("channel_options", ()))
        self._calls = self._direct or self._async

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """A unary call's coroutine (of ``_calls``), run where it belongs."""
        return self._loop.run(coro) if self._direct is None else run_here(coro)

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
        return self._run(self._calls.append(stream, events, expected_revision, timeout=timeout))

    def read_stream(
        self,
        stream: str,
        *,
        from_revision: int | None = None,
        backwards: bool = False,
        max_count: int = 0,
        timeout: float | None = None,
    ) -> ReadResult:
        return self._run(
            self._calls.read_stream(
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
        return self._run(
            self._calls.read_all(
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
        return self._run(self._calls.get_event(event_id, timeout=timeout))

    def info(self, *, timeout: float | None = None) -> StoreInfo:
        return self._run(self._calls.info(timeout=timeout))

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
            if self._direct is not None:
                self._direct.close_channel()
            self._loop.run(self._async.close())

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription(Iterator[RecordedEvent]):
    """Blocking iterator over an :class:`AsyncSubscription`.

    It takes every event buffered there in one trip to the loop and hands them
    out here (a trip per event cost more than the event: perf/RESULTS.md); their
    credits go back to the daemon at the next trip, once they are handed out, so
    no more than ``window`` events are held in all."""

    def __init__(self, inner: AsyncSubscription, loop: _LoopThread) -> None:
        self._inner = inner
        self._loop = loop
        self._held: deque[RecordedEvent] = deque()
        self._handed = 0  # events handed out since the last take
        self._last: RecordedEvent | None = None

    def __next__(self) -> RecordedEvent:
        if not self._held:
            handed, self._handed = self._handed, 0
            try:
                self._held.extend(self._loop.run(self._inner._take(handed)))
            except StopAsyncIteration:
                raise StopIteration from None
        event = self._held.popleft()
        self._handed += 1
        self._last = event
        return event

    @property
    def caught_up(self) -> bool:
        return self._inner.caught_up

    @property
    def last_position(self) -> int | None:
        """The position of the last event handed out (decoding that event)."""
        return None if self._last is None else self._last.position

    @property
    def reconnects(self) -> int:
        return self._inner.reconnects

    def lag(self) -> int:
        return self._loop.run(self._inner._lag_after(self.last_position))

    def ack(self, position: int | RecordedEvent) -> None:
        self._loop.run(self._inner.ack(position))

    def close(self, flush_timeout: float = 5.0) -> None:
        self._loop.run(self._inner.close(flush_timeout))

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
