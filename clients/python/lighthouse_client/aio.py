"""AsyncStoreClient: the asyncio client, and the core the sync client runs on.

Layers, each its own module and testable on its own:

- transport (here): one ``grpc.aio`` channel with keepalive and reconnect
  backoff; the requests (``_convert``) and, for reads, resuming a broken
  stream after the last event received (a retry asks for the rest, neither
  repeating nor skipping an event);
- one call (``_calls.Caller``): errors mapped once (``handle_rpc_error``),
  retries of recoverable errors within the call's deadline (``timeout``,
  default 10 s, covering every attempt; ``_retry``), and the circuit
  breaker (``_breaker``), which counts calls that could not reach the
  daemon, not attempts;
- degraded mode (``_degraded.DegradedMode``): reads answered from a
  ``ReadCache`` (marked stale) and appends queued in an ``Outbox``, flushed
  in order, while the daemon cannot be reached;
- subscriptions: ``AsyncSubscription`` (``_subscription.py``) reconnects and
  resumes after the last delivered position.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import grpc

from lighthouse_client import _convert
from lighthouse_client._breaker import CircuitBreaker
from lighthouse_client._cache import ReadCache
from lighthouse_client._calls import Caller, Rpc
from lighthouse_client._degraded import CachedAnswer, DegradedMode
from lighthouse_client._outbox import DeadLetter, Outbox
from lighthouse_client._retry import RetryPolicy
from lighthouse_client._security import Metadata, Tls, Token, auth_metadata
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
    recorded_events,
)
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

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
        tls: Tls | None = None,
        token: Token | None = None,
    ) -> None:
        self.target = target
        self.tls = tls  # None: a plaintext channel
        self._token = token  # sent with every call (_security.py); never logged
        self.timeout = timeout
        self._caller = Caller(retry or RetryPolicy(), breaker or CircuitBreaker())
        self._degraded = DegradedMode(
            self._caller, self._append_rpc, cache=cache, outbox=outbox, on_conflict=on_conflict
        )
        self._flush_interval = outbox_flush_interval
        self._tracing = tracing
        self._options = (*CHANNEL_OPTIONS, *channel_options)
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._flusher: asyncio.Task[None] | None = None

    @property
    def retry(self) -> RetryPolicy:
        return self._caller.retry

    @property
    def breaker(self) -> CircuitBreaker:
        return self._caller.breaker

    @property
    def cache(self) -> ReadCache | None:
        return self._degraded.cache

    @property
    def outbox(self) -> Outbox | None:
        return self._degraded.outbox

    # -- plumbing ------------------------------------------------------------

    @property
    def stub(self) -> Any:
        if self._stub is None:
            interceptors = None
            if self._tracing:
                from lighthouse_client.tracing import client_interceptors

                interceptors = client_interceptors()
            if self.tls is None:
                self._channel = grpc.aio.insecure_channel(
                    self.target, options=self._options, interceptors=interceptors
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self.tls.credentials(), self._options, interceptors=interceptors
                )
            self._stub = pb_grpc.EventStoreServiceStub(self._channel)
            if self.outbox is not None:
                self._flusher = asyncio.get_running_loop().create_task(
                    self._degraded.flush_forever(self._flush_interval, self.timeout)
                )
        return self._stub

    def auth_metadata(self) -> Metadata | None:
        """The metadata each call sends: the token's, or None."""
        return auth_metadata(self._token)

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

    def _timeout(self, timeout: float | None) -> float:
        _ = self.stub  # creates the channel (and the flusher) in this loop
        return self.timeout if timeout is None else timeout

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
        return await self._degraded.append(stream, expected_revision, evs, self._timeout(timeout))

    def _append_rpc(
        self, stream: str, expected: ExpectedRevision, events: Sequence[NewEvent]
    ) -> Rpc[AppendResult]:
        request = _convert.append_request(stream, events, expected)

        async def append_once(timeout: float) -> AppendResult:
            r: pb.AppendResponse = await self.stub.Append(
                request, timeout=timeout, metadata=self.auth_metadata()
            )
            return AppendResult(r.first_position, r.last_position, r.last_revision)

        return append_once

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
        sent, _ = await self._degraded.flush(self._timeout(timeout))
        return sent

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

        def cached(cache: ReadCache) -> tuple[list[RecordedEvent], float] | None:
            return cache.read_stream(stream, from_revision, backwards, max_count)

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

        def cached(cache: ReadCache) -> tuple[list[RecordedEvent], float] | None:
            return cache.read_all(from_position, backwards, max_count, filter, from_ns=lo, to_ns=hi)

        return await self._read(request, "from_position", cached, timeout)

    async def _read(
        self,
        request: pb.ReadRequest,
        start_field: str,
        cached: CachedAnswer,
        timeout: float | None,
    ) -> ReadResult:
        got: list[RecordedEvent] = []
        backwards = request.direction == pb.DIRECTION_BACKWARDS
        key = "revision" if start_field == "from_revision" else "position"

        async def read_once(remaining: float) -> list[RecordedEvent]:
            req = request
            if got:  # a retry resumes after what already arrived
                nxt = getattr(got[-1], key) + (-1 if backwards else 1)
                if nxt < (0 if key == "revision" else 1) or (
                    request.max_count and len(got) >= request.max_count
                ):
                    return got
                req = pb.ReadRequest()
                req.CopyFrom(request)
                setattr(req, start_field, nxt)
                if request.max_count:
                    req.max_count = request.max_count - len(got)
            async for page in self.stub.Read(
                req, timeout=remaining, metadata=self.auth_metadata()
            ):
                got.extend(recorded_events(page.events))
            return got

        return await self._degraded.read(read_once, self._timeout(timeout), cached, got)

    async def get_event(self, event_id: str, *, timeout: float | None = None) -> EventResult:
        request = pb.GetEventRequest(event_id=event_id)

        async def get_once(remaining: float) -> RecordedEvent:
            resp = await self.stub.GetEvent(
                request, timeout=remaining, metadata=self.auth_metadata()
            )
            return recorded_events((resp.event,))[0]

        return await self._degraded.get_event(get_once, self._timeout(timeout), event_id)

    async def info(self, *, timeout: float | None = None) -> StoreInfo:
        request = pb.GetInfoRequest()
        deadline = time.monotonic() + self._timeout(timeout)
        resp = await self._caller(
            lambda t: self.stub.GetInfo(request, timeout=t, metadata=self.auth_metadata()),
            deadline,
        )
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
