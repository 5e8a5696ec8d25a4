"""AsyncSubscription: a resumable, flow-controlled async iterator of events.

- Credits: the stream opens with ``window`` credits and gives them back as the
  caller consumes events, so at most ``window`` events are buffered here.
- Resume: when the stream breaks (daemon restart, network), it reconnects
  with exponential backoff and full jitter and asks for events after the last
  position it received (or after a filter checkpoint). Events at or below
  that position are dropped if the daemon sends them again (a named consumer
  restarts from its stored checkpoint), so the caller sees every event exactly
  once and in order across reconnects.
- ``caught_up`` turns true when the daemon says the subscription reached the
  head; events received before that marker may still be waiting in the
  local buffer (at most ``window`` of them), so compare positions with
  ``info().head_position`` when "processed everything up to now" matters.
- Acks (named consumers): ``ack()`` sends the position; the daemon stores acks
  in batches and confirms them; ``close()`` waits (bounded) for the
  confirmation of the last ack, and an ack not yet confirmed is re-sent after
  a reconnect. The daemon refuses an ack above what the stream it arrives on
  has told the client about (an event, a checkpoint, the start), and a
  reconnected consumer restarts from its stored checkpoint, which may be
  behind the ack: so an ack is written only once the current stream has
  passed its position (the repeats the client drops count), and otherwise
  waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

import grpc

from lighthouse_client import _convert
from lighthouse_client._types import Filter, RecordedEvent, recorded_events
from lighthouse_client.exceptions import InvalidRequest, StoreError, Unavailable, handle_rpc_error
from lighthouse_proto.v1 import store_pb2 as pb

if TYPE_CHECKING:
    from lighthouse_client.aio import AsyncStoreClient

Start = Literal["start", "end"] | int

# A write on a finished call raises InvalidStateError in grpc.aio, not RpcError;
# either way the next read fails too and the subscription reconnects.
_WRITE_FAILED = (grpc.RpcError, asyncio.InvalidStateError)

_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


class AsyncSubscription:
    def __init__(
        self,
        client: AsyncStoreClient,
        *,
        start: Start,
        consumer: str | None,
        filter: Filter | None,
        window: int,
        heartbeat: float,
        reconnect_timeout: float | None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._client = client
        self._start = start
        self.consumer = consumer
        self._filter = filter
        self._window = window
        self._heartbeat = heartbeat
        self._reconnect_timeout = reconnect_timeout
        self._call: Any = None
        self._buffer: deque[RecordedEvent] = deque()
        self._resume_after: int | None = None  # last position received or checkpointed
        self._consumed = 0  # events consumed since credits were last returned
        self._acked = 0
        self._stored_ack = 0
        self._told = 0  # the highest position the current stream has told us about
        self._ack_written = 0  # the highest ack written on the current stream
        self._closed = False
        self._failures = 0
        self._down_since: float | None = None
        self.caught_up = False
        self._last: RecordedEvent | None = None  # the last event handed to the caller
        self.reconnects = 0

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> RecordedEvent:
        await self._wait_for_events()
        event = self._buffer.popleft()
        self._last = event
        await self._spent(1)
        return event

    async def _take(self, handed: int) -> list[RecordedEvent]:
        """For the blocking iterator (``client.Subscription``), which hands events
        out itself, one trip to the loop per batch instead of per event: the
        ``handed`` events it handed out since its last take are consumed (their
        credits go back now, as iteration returns them one by one), then every
        event buffered, waiting for one as iteration does."""
        await self._spent(handed)
        await self._wait_for_events()
        taken = list(self._buffer)
        self._buffer.clear()
        self._last = taken[-1]
        return taken

    async def _wait_for_events(self) -> None:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            await self._receive()

    @property
    def last_position(self) -> int | None:
        """The position of the last event handed to the caller (read when asked
        for: reading it decodes that event, ``_types.py``)."""
        return None if self._last is None else self._last.position

    async def lag(self) -> int:
        """Events between the last one delivered and the daemon's head."""
        return await self._lag_after(self.last_position)

    async def _lag_after(self, position: int | None) -> int:
        head = (await self._client.info()).head_position
        return max(0, head - (position or 0))

    async def ack(self, position: int | RecordedEvent) -> None:
        """Record that everything up to ``position`` is processed (named consumers)."""
        if not self.consumer:
            raise InvalidRequest("ack needs a named consumer (subscribe(consumer=...))")
        pos = position.position if isinstance(position, RecordedEvent) else position
        if pos <= self._acked:
            return
        self._acked = pos
        await self._write_ack()

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Flush the last ack (waiting for the daemon to confirm it), then stop."""
        deadline = time.monotonic() + flush_timeout
        try:
            # _receive reconnects if the stream broke and re-sends the ack.
            while (
                self.consumer
                and not self._closed
                and self._acked > self._stored_ack
                and time.monotonic() < deadline
            ):
                await asyncio.wait_for(self._receive(), max(0.01, deadline - time.monotonic()))
        except (TimeoutError, StoreError):
            pass
        finally:
            self._closed = True
            self._hang_up()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------

    def _hang_up(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _spent(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= max(1, self._window // 2) and self._call is not None:
            credits, self._consumed = self._consumed, 0
            # If this fails, the next read fails too and reconnects with a full window.
            with contextlib.suppress(*_WRITE_FAILED):
                await self._call.write(pb.SubscribeRequest(credits=credits))

    async def _write_ack(self) -> None:
        """Write the last ack on the current stream once it has passed it."""
        if (
            self._call is None
            or not self.consumer
            or self._acked <= max(self._ack_written, self._stored_ack)
            or self._acked > self._told
        ):
            return
        self._ack_written = self._acked
        with contextlib.suppress(*_WRITE_FAILED):  # the next read reconnects; re-sent then
            await self._call.write(pb.SubscribeRequest(ack_position=self._acked))

    async def _connect(self) -> None:
        options = pb.SubscribeOptions(
            consumer=self.consumer or "",
            filter=_convert.event_filter(self._filter),
            initial_credits=self._window,
            heartbeat_interval_ms=int(self._heartbeat * 1000),
        )
        if self._resume_after is not None:
            options.after_position = self._resume_after
        elif self._start == "start":
            options.from_start.SetInParent()
        elif self._start == "end":
            options.from_end.SetInParent()
        else:
            options.after_position = int(self._start)
        self._consumed = 0
        self._told = self._ack_written = 0
        self._call = self._client.stub.Subscribe(metadata=self._client.auth_metadata())
        await self._call.write(pb.SubscribeRequest(options=options))

    async def _receive(self) -> None:
        """Read one message from the stream, reconnecting if it broke."""
        try:
            if self._call is None:
                await self._connect()
            msg = await self._call.read()
        except grpc.RpcError as exc:
            await self._broken(handle_rpc_error(exc))
            return
        except asyncio.InvalidStateError:  # a write raced the call's end
            await self._broken(Unavailable("the subscription stream ended"))
            return
        if msg is grpc.aio.EOF:
            await self._broken(Unavailable("the subscription stream ended"))
            return
        self._failures, self._down_since = 0, None
        kind = msg.WhichOneof("kind")
        told = _told(msg, kind)
        if told > self._told:
            self._told = told
            await self._write_ack()
        if kind == "events":
            wire = msg.events.events
            fresh = recorded_events(wire)
            floor = self._resume_after or 0
            # Positions ascend within a page; read off the page, so nothing is decoded.
            if fresh and wire[0].position > floor:
                kept, last = fresh, int(wire[-1].position)
            else:  # repeats after a reconnect
                kept = [e for e in fresh if e.position > floor]
                last = kept[-1].position if kept else 0
            if kept:
                self._resume_after = last
                self._buffer.extend(kept)
                if self._client.cache is not None:
                    self._client.cache.put(kept)
            if len(kept) < len(fresh):
                await self._spent(len(fresh) - len(kept))
        elif kind == "confirmation" and self._resume_after is None:
            self._resume_after = msg.confirmation.start_after_position
        elif kind == "caught_up_position":
            self.caught_up = True
            if self._client.cache is not None:
                self._client.cache.note_head(msg.caught_up_position)
        elif kind == "fell_behind_position":
            self.caught_up = False
        elif kind == "checkpoint_position":
            self._resume_after = max(self._resume_after or 0, msg.checkpoint_position)
        elif kind == "checkpoint_stored_position":
            self._stored_ack = max(self._stored_ack, msg.checkpoint_stored_position)

    async def _broken(self, error: StoreError) -> None:
        self._hang_up()
        if not error.retryable or self._closed:
            raise error
        now = time.monotonic()
        self._down_since = self._down_since or now
        if self._reconnect_timeout is not None and now - self._down_since > self._reconnect_timeout:
            raise error
        self._failures += 1
        self.reconnects += 1
        self.caught_up = False
        cap = min(_MAX_BACKOFF, _MIN_BACKOFF * 2 ** min(self._failures, 10))
        await asyncio.sleep(random.uniform(0, cap))  # full jitter


def _told(msg: Any, kind: str | None) -> int:
    """The position up to which ``msg`` tells the client about the log (0: none)."""
    if kind == "events":
        events = msg.events.events
        return int(events[-1].position) if events else 0
    if kind == "confirmation":
        return int(msg.confirmation.start_after_position)
    if kind in ("checkpoint_position", "caught_up_position", "fell_behind_position"):
        return int(getattr(msg, kind))
    return 0
