"""AsyncStoreClient: the asyncio client, and the core the sync client runs on.

Layers, each its own piece:

- transport: one ``grpc.aio`` channel with keepalive and reconnect backoff;
  every call has a deadline (``timeout``, default 10 s, covering retries);
- errors: every ``grpc.RpcError`` goes through ``exceptions.handle_rpc_error``;
- retries: ``_retry.RetryPolicy`` (tenacity), recoverable errors only; appends
  are safe to retry because every event carries an id;
- degraded mode: a ``CircuitBreaker`` counts unreachable attempts; when the
  daemon cannot be reached, reads are answered from a ``ReadCache`` (marked
  stale) and appends go to an ``Outbox`` (when one is configured), flushed in
  order once the daemon is back (``_outbox.flush_action`` decides, from an
  error's failure class, what a refused entry does to the flush);
- subscriptions: ``AsyncSubscription`` (``_subscription.py``) reconnects and
  resumes after the last delivered position.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc

from lighthouse_client import _convert
from lighthouse_client._breaker import BreakerState, CircuitBreaker
from lighthouse_client._cache import ReadCache
from lighthouse_client._outbox import DeadLetter, FlushAction, Outbox, flush_action
from lighthouse_client._retry import CircuitOpen, RetryPolicy
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
from lighthouse_client.exceptions import (
    DeadlineExceeded,
    StoreError,
    Unavailable,
    handle_rpc_error,
)
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

log = logging.getLogger("lighthouse_client")

T = TypeVar("T")

DEFAULT_TARGET = "127.0.0.1:50051"

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.enable_retries", 0),  # RetryPolicy retries; gRPC's own would stack on top
)

# Errors that mean "the daemon could not be reached" (as opposed to "it said no").
UNREACHABLE = (Unavailable, DeadlineExceeded)


class AsyncStoreClient:
    """Talks to one Lighthouse Store daemon.

    ``cache``, ``outbox`` and ``breaker`` turn on degraded mode; the client
    uses them but does not close them.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        cache: ReadCache | None = None,
        outbox: Outbox | None = None,
        on_conflict: Callable[[DeadLetter], None] | None = None,
        outbox_flush_interval: float = 1.0,
        tracing: bool = False,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.cache = cache
        self.outbox = outbox
        self.on_conflict = on_conflict
        self._flush_interval = outbox_flush_interval
        self._tracing = tracing
        self._options = (*CHANNEL_OPTIONS, *channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._flush_lock: asyncio.Lock | None = None
        self._flusher: asyncio.Task[None] | None = None

    # -- plumbing ------------------------------------------------------------

    @property
    def stub(self) -> Any:
        if self._stub is None:
            interceptors = None
            if self._tracing:
                from lighthouse_client.tracing import client_interceptors

                interceptors = client_interceptors()
            self._channel = grpc.aio.insecure_channel(
                self.target, options=self._options, interceptors=interceptors
            )
            self._stub = pb_grpc.EventStoreServiceStub(self._channel)
            self._flush_lock = asyncio.Lock()
            if self.outbox is not None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        return self._stub

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def __aenter__(self) -> AsyncStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    async def _call(self, fn: Callable[[float], Awaitable[T]], timeout: float | None) -> T:
        """Run one RPC with retries, the breaker and error mapping."""
        stub = self.stub  # noqa: F841 - creates the channel in this loop

        async def attempt(remaining: float) -> T:
            if not self.breaker.allow():
                raise CircuitOpen("the daemon was unreachable too often; circuit breaker open")
            try:
                result = await fn(remaining)
            except grpc.RpcError as exc:
                error = handle_rpc_error(exc)
                if isinstance(error, UNREACHABLE):
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()  # it answered
                raise error from None
            self.breaker.record_success()
            return result

        return await self.retry.run(self._deadline(timeout), attempt)

    # -- writes --------------------------------------------------------------

    async def append(
        self,
        stream: str,
        events: NewEvent | Sequence[NewEvent],
        expected_revision: ExpectedRevision = ANY,
        *,
        timeout: float | None = None,
    ) -> AppendResult:
        """Append events atomically. Safe to retry: event ids make it idempotent.

        With an outbox, an append that cannot reach the daemon is stored locally
        and returned with ``queued=True``. While the outbox holds entries, an
        append first flushes it (:meth:`flush_outbox`) and, to keep the order,
        is never sent ahead of what is left:

        - left because the daemon cannot take it yet (a recoverable error:
          unreachable, overloaded, deadline, circuit open): this append is
          queued behind it and returns ``queued=True``;
        - left because the daemon answered restart-required (e.g.
          :class:`Corruption`): that error is raised here, and nothing of this
          append is sent or queued; the node needs an operator.
        """
        evs = [events] if isinstance(events, NewEvent) else list(events)
        request = _convert.append_request(stream, evs, expected_revision)
        if self.outbox is not None and len(self.outbox):
            _, stopped_by = await self._flush(None)
            if len(self.outbox):
                # (stopped_by is None when entries were queued during the flush.)
                if stopped_by is not None and flush_action(stopped_by) is FlushAction.FAIL:
                    raise stopped_by
                return self._queue(stream, expected_revision, evs)
        try:
            resp = await self._call(functools.partial(self._append_once, request), timeout)
        except UNREACHABLE:
            if self.outbox is None:
                raise
            return self._queue(stream, expected_revision, evs)
        return AppendResult(resp.first_position, resp.last_position, resp.last_revision)

    async def _append_once(self, request: pb.AppendRequest, timeout: float) -> pb.AppendResponse:
        response: pb.AppendResponse = await self.stub.Append(request, timeout=timeout)
        return response

    def _queue(
        self, stream: str, expected: ExpectedRevision, events: list[NewEvent]
    ) -> AppendResult:
        assert self.outbox is not None
        self.outbox.enqueue(stream, expected, events)
        return AppendResult(0, 0, 0, queued=True)

    async def flush_outbox(self, *, timeout: float | None = None) -> int:
        """Send queued appends in order; returns how many were written.

        An entry the daemon refuses is handled by its error's failure class
        (``_outbox.flush_action``), nothing is dropped:

        - human intervention (wrong expected revision, id conflict, invalid
          request, permission denied, ...): retrying cannot help, so it goes
          to the dead-letter list and to ``on_conflict``, and the flush goes
          on with the next entry;
        - recoverable (unreachable, overloaded, deadline, circuit open) or
          restart-required (corruption, storage failure): the flush stops
          there; that entry and everything behind it stay queued, in order
          (:meth:`append` then queues behind them, or raises the
          restart-required error).
        """
        sent, _ = await self._flush(timeout)
        return sent

    async def _flush(self, timeout: float | None) -> tuple[int, StoreError | None]:
        """flush_outbox, also returning the error that stopped it (None when it
        got through every entry it saw)."""
        if self.outbox is None:
            return 0, None
        _ = self.stub
        assert self._flush_lock is not None
        sent = 0
        async with self._flush_lock:
            for entry in self.outbox.pending():
                request = _convert.append_request(entry.stream, entry.events, entry.expected)
                try:
                    await self._call(functools.partial(self._append_once, request), timeout)
                except StoreError as exc:
                    if flush_action(exc) is not FlushAction.DEAD_LETTER:
                        return sent, exc  # keep it queued, in order
                    dead = self.outbox.dead_letter(entry.seq, f"{type(exc).__name__}: {exc}")
                    log.warning("outbox entry %d dead-lettered: %s", entry.seq, exc)
                    if self.on_conflict is not None:
                        self.on_conflict(dead)
                    continue
                self.outbox.remove(entry.seq)
                sent += 1
        return sent, None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            # state, not allow(): allow() would take the half-open probe slot
            # that flush_outbox's own call needs.
            if (
                self.outbox is not None
                and len(self.outbox)
                and self.breaker.state is not BreakerState.OPEN
            ):
                try:
                    await self.flush_outbox()
                except Exception:  # keep flushing later; never kill the task
                    log.exception("outbox flush failed")

    # -- reads ---------------------------------------------------------------

    async def read_stream(
        self,
        stream: str,
        *,
        from_revision: int | None = None,
        backwards: bool = False,
        max_count: int = 0,
        timeout: float | None = None,
    ) -> ReadResult:
        """Events of one stream from ``from_revision`` (inclusive)."""
        request = pb.ReadRequest(stream=stream, max_count=max_count)
        request.direction = pb.DIRECTION_BACKWARDS if backwards else pb.DIRECTION_FORWARDS
        if from_revision is not None:
            request.from_revision = from_revision

        def cached() -> tuple[list[RecordedEvent], float] | None:
            if self.cache is None:
                return None
            return self.cache.read_stream(stream, from_revision, backwards, max_count)

        return await self._read(request, "from_revision", cached, timeout)

    async def read_all(
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
        """Events of the whole log from ``from_position`` (inclusive), those
        matching ``filter`` and recorded in ``[from_time, to_time)``; up to
        ``max_count`` of them (0 = no limit)."""
        request = pb.ReadRequest(
            stream="$all",
            max_count=max_count,
            filter=_convert.event_filter(filter),
            from_time=_convert.timestamp(from_time),
            to_time=_convert.timestamp(to_time),
        )
        request.direction = pb.DIRECTION_BACKWARDS if backwards else pb.DIRECTION_FORWARDS
        if from_position is not None:
            request.from_position = from_position
        lo, hi = _convert.time_ns(from_time), _convert.time_ns(to_time)

        def cached() -> tuple[list[RecordedEvent], float] | None:
            if self.cache is None:
                return None
            return self.cache.read_all(
                from_position, backwards, max_count, filter, from_ns=lo, to_ns=hi
            )

        return await self._read(request, "from_position", cached, timeout)

    async def _read(
        self,
        request: pb.ReadRequest,
        start_field: str,
        cached: Callable[[], tuple[list[RecordedEvent], float] | None],
        timeout: float | None,
    ) -> ReadResult:
        got: list[RecordedEvent] = []
        backwards = request.direction == pb.DIRECTION_BACKWARDS
        key = "revision" if start_field == "from_revision" else "position"

        async def attempt(remaining: float) -> None:
            req = request
            if got:  # a retry resumes after what already arrived
                nxt = getattr(got[-1], key) + (-1 if backwards else 1)
                if nxt < (0 if key == "revision" else 1) or (
                    request.max_count and len(got) >= request.max_count
                ):
                    return
                req = pb.ReadRequest()
                req.CopyFrom(request)
                setattr(req, start_field, nxt)
                if request.max_count:
                    req.max_count = request.max_count - len(got)
            async for page in self.stub.Read(req, timeout=remaining):
                got.extend(_convert.recorded(e) for e in page.events)

        try:
            await self._call(attempt, timeout)
        except UNREACHABLE as exc:
            if self.cache is None or got:
                # With events already flowing the daemon is reachable, only slow:
                # a stale answer would hide that; the caller sees the error.
                raise
            answer = cached()
            if answer is None:
                raise Unavailable(
                    f"the daemon is unreachable and the cache cannot answer this read ({exc})"
                ) from exc
            events, fetched_at = answer
            head = self.cache.head_position if self.cache is not None else None
            return ReadResult(tuple(events), stale=True, fetched_at=fetched_at, head_position=head)
        if self.cache is not None:
            self.cache.put(got)
        return ReadResult(tuple(got))

    async def get_event(self, event_id: str, *, timeout: float | None = None) -> EventResult:
        request = pb.GetEventRequest(event_id=event_id)
        try:
            resp = await self._call(lambda t: self.stub.GetEvent(request, timeout=t), timeout)
        except UNREACHABLE as exc:
            if self.cache is None:
                raise
            hit = self.cache.get_event(event_id)
            if hit is None:
                raise Unavailable(
                    f"the daemon is unreachable and event {event_id} is not cached ({exc})"
                ) from exc
            return EventResult(hit[0], stale=True, fetched_at=hit[1])
        event = _convert.recorded(resp.event)
        if self.cache is not None:
            self.cache.put([event])
        return EventResult(event)

    async def info(self, *, timeout: float | None = None) -> StoreInfo:
        request = pb.GetInfoRequest()
        resp = await self._call(lambda t: self.stub.GetInfo(request, timeout=t), timeout)
        if self.cache is not None:
            self.cache.note_head(resp.head_position)
        return _convert.store_info(resp)

    # -- subscriptions -------------------------------------------------------

    def subscribe(
        self,
        *,
        start: Start = "start",
        consumer: str | None = None,
        filter: Filter | None = None,
        window: int = 1000,
        heartbeat: float = 5.0,
        reconnect_timeout: float | None = None,
    ) -> AsyncSubscription:
        """Follow the log: catch-up, then live. ``start``: "start", "end", or a
        position to start after. ``consumer`` names a durable consumer: the
        daemon resumes it after its last ``ack``. The iterator reconnects when
        the stream breaks and never repeats or skips an event."""
        return AsyncSubscription(
            self,
            start=start,
            consumer=consumer,
            filter=filter,
            window=window,
            heartbeat=heartbeat,
            reconnect_timeout=reconnect_timeout,
        )
