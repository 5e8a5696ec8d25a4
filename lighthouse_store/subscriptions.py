"""Subscriptions: catch-up then live, read from storage, with credits and acks.

Design
======

One code path serves both catch-up and live delivery: a session keeps the
last position it has passed (``cursor``) and, whenever the store's head is
beyond it, reads the next page after it from LMDB in a short read
transaction, exactly like a Read. There is no per-subscriber queue of live
events: after each commit the writer tells the :class:`SubscriptionHub`, which
wakes every waiting session; each then reads what it has not seen. So

- a slow or stalled subscriber costs one page of memory at most (the page it
  is sending) and never slows writers: it just reads further back in the log
  when it resumes;
- every event is delivered exactly once and in position order, whether it was
  committed before or after the subscription started;
- ``caught_up`` is sent each time the session reaches the head from behind,
  and ``fell_behind`` when a session that was live finds itself more than
  ``fell_behind_events`` behind the head (it then reads from storage until it
  catches up again, and says ``caught_up`` again).

Flow control: with ``initial_credits`` > 0 the server never has more events
in flight than the client has granted (credits are spent on send); with 0 only
HTTP/2 flow control applies. Filters are evaluated server-side; a filtered
session sends a ``checkpoint`` after ``checkpoint_interval`` positions passed
without a match, so it can resume without rescanning. An idle session gets a
heartbeat every ``heartbeat_interval_ms``.

Named consumers: ``options.consumer`` resumes after the consumer's stored
position (exclusive); ``start`` applies only when it has none. Acks go through
the writer (batched with appends, never an fsync per ack), and the session
confirms them with ``checkpoint_stored_position`` once they are durable.

Which acks are taken (after KurrentDB's checkpoints and NATS JetStream's acks,
which only ever name what the server sent): a session may ack any position up
to the last one it told the client about (``delivered``), whether in an event
or in a position message: the confirmation's ``start_after_position``,
``checkpoint_position``, ``caught_up_position``, ``fell_behind_position``.
Every one of those is a position up to which the session has sent every event
that matches its filter, so acking it skips nothing unseen. An ack above it is
INVALID_ARGUMENT (``last_delivered`` in the ErrorInfo), even when at or below
the head: it would move the consumer past events this subscription never sent,
and the next one would silently skip them. So a client re-sends an ack made on
an earlier subscription only once the new one has delivered that far. An ack
below the consumer's stored position changes nothing (a consumer never moves
backwards); moving a consumer elsewhere on purpose is a separate, explicit
operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from google.protobuf.timestamp_pb2 import Timestamp

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import records, validation
from lighthouse_store.config import SubscriptionSettings
from lighthouse_store.errors import InvalidArgument, ShuttingDown, StoreError
from lighthouse_store.metrics import DaemonMetrics
from lighthouse_store.store import EventStore, Page, ReadQuery
from lighthouse_store.writer import CommitInfo, GroupCommitWriter

log = logging.getLogger("lighthouse_store.subscriptions")

_EVENTS_TAG = b"\x12"  # SubscribeResponse.events (field 2, EventBatch)


class SubscriptionHub:
    """Knows every live session; wakes them after commits."""

    def __init__(
        self,
        store: EventStore,
        writer: GroupCommitWriter,
        readers: Executor,
        settings: SubscriptionSettings | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.readers = readers
        self.settings = settings or SubscriptionSettings()
        self.metrics = metrics or DaemonMetrics(None, instruments=False)
        self._sessions: set[Session] = set()
        self._closing = False
        writer.add_listener(self._on_commit)

    @property
    def count(self) -> int:
        return len(self._sessions)

    @property
    def closing(self) -> bool:
        return self._closing

    def shut_down(self) -> None:
        """End every session with UNAVAILABLE, so clients resume elsewhere or later."""
        self._closing = True
        for session in self._sessions:
            session.wake.set()

    def max_lag(self) -> int:
        """The largest distance from the head to what a session last told its client."""
        head = self.store.head_position()
        return max((head - s.delivered for s in self._sessions), default=0)

    def wake_all(self) -> None:
        """Wake every session: another worker's commit moved the head (wakeups.py)."""
        for session in self._sessions:
            session.wake.set()

    def _on_commit(self, info: CommitInfo) -> None:
        for session in self._sessions:
            if info.checkpoints and session.consumer in info.checkpoints:
                session.stored_ack = max(session.stored_ack, info.checkpoints[session.consumer])
            session.wake.set()

    async def serve(self, requests: AsyncIterator[pb.SubscribeRequest]) -> AsyncIterator[bytes]:
        """Run one subscription: the response stream, as encoded messages."""
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if self._closing:
            raise ShuttingDown("the store is shutting down; resubscribe later")
        if first.WhichOneof("kind") != "options":
            raise InvalidArgument("options: the first message of a subscription must be options")
        session = Session(self, first.options)
        self._sessions.add(session)
        self.metrics.subscription_started(session.resumed)
        try:
            async for message in session.run(requests):
                yield message
        finally:
            self._sessions.discard(session)
            self.metrics.subscription_ended()
            await session.close()


class Session:
    def __init__(self, hub: SubscriptionHub, options: pb.SubscribeOptions) -> None:
        self.hub = hub
        self.settings = hub.settings
        self.id = uuid.uuid4().hex
        self.consumer = (
            validation.stream_name(options.consumer, "options.consumer", writable=False)
            if options.consumer
            else ""
        )
        self.query = _query(options)
        self.credits: int | None = options.initial_credits or None
        settings = self.settings
        validation.at_least("options.heartbeat_interval_ms", options.heartbeat_interval_ms,
                            settings.min_heartbeat_ms)  # fmt: skip
        validation.at_least("options.checkpoint_interval", options.checkpoint_interval,
                            settings.min_checkpoint_interval)  # fmt: skip
        self.heartbeat = (options.heartbeat_interval_ms or settings.default_heartbeat_ms) / 1e3
        self.checkpoint_interval = (
            options.checkpoint_interval or settings.default_checkpoint_interval
        )
        self.resumed = False  # from a consumer's stored position, or a given one
        self.cursor = self._start_after(options)
        self.wake = asyncio.Event()
        self.stored_ack = -1
        self._acked = -1
        self.delivered = self.cursor  # the last position told to the client (see Acks above)
        self._error: StoreError | None = None
        self._reader: asyncio.Task[None] | None = None

    def _start_after(self, options: pb.SubscribeOptions) -> int:
        if self.consumer:
            stored = self.hub.store.get_checkpoint(self.consumer)
            if stored is not None:
                self.resumed = True
                return stored
        which = options.WhichOneof("start")
        if which == "from_end":
            # From storage: another worker's latest commit may not have reached this one yet.
            return self.hub.store.last_position()
        if which == "after_position":
            # A position past the head is no position this store gave out (a
            # client of another store, or of this one before a restore from an
            # older backup): starting there would skip, unseen, every event
            # written up to it. Refused, as an ack past the head is.
            self._refuse_past_head(options.after_position, "options.after_position")
            self.resumed = True
            return int(options.after_position)
        return 0

    def _refuse_past_head(self, position: int, field: str) -> None:
        store = self.hub.store
        if position <= store.head_position():
            return
        head = store.last_position()  # the head is published just after a commit shows
        if position > head:
            raise InvalidArgument(
                f"{field}: {position} is beyond the head of the log ({head})", head=str(head)
            )

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read_requests(self, requests: AsyncIterator[pb.SubscribeRequest]) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "credits":
                    if self.credits is not None:
                        self.credits += request.credits
                elif kind == "ack_position":
                    self._ack(request.ack_position)
                elif kind is None:  # an empty message, or only fields this server does not know
                    raise InvalidArgument(
                        "kind: a message after the options must set credits or ack_position"
                    )
                else:
                    raise InvalidArgument(f"{kind}: only credits and acks may follow the options")
                self.wake.set()
        except StoreError as exc:
            self._error = exc
            self.wake.set()

    def _ack(self, position: int) -> None:
        if not self.consumer:
            raise InvalidArgument("ack_position: acks need a named consumer (options.consumer)")
        self._refuse_past_head(position, "ack_position")
        if position > self.delivered:
            raise InvalidArgument(
                f"ack_position: {position} is beyond the last position this subscription "
                f"delivered ({self.delivered}); an ack names a position the client was sent",
                last_delivered=str(self.delivered),
            )
        if position > self._acked:
            self._acked = position
            self.hub.writer.checkpoint(self.consumer, position)

    async def run(self, requests: AsyncIterator[pb.SubscribeRequest]) -> AsyncIterator[bytes]:
        self._reader = asyncio.get_running_loop().create_task(self._read_requests(requests))
        yield pb.SubscribeResponse(
            confirmation=pb.SubscriptionConfirmation(
                subscription_id=self.id, start_after_position=self.cursor
            )
        ).SerializeToString()
        live = False
        reported = self.cursor  # last position told to the client (event or checkpoint)
        told_stored = -1
        last_sent = time.monotonic()
        while True:
            self.wake.clear()
            if self._error is not None:
                raise self._error
            if self.hub.closing:
                raise ShuttingDown("the store is shutting down; resubscribe later")
            if self.stored_ack > told_stored:
                told_stored = self.stored_ack
                yield _message(checkpoint_stored_position=told_stored)
                last_sent = time.monotonic()
            head = self.hub.store.head_position()
            can_send = self.credits is None or self.credits > 0
            if can_send and self.cursor < head:
                if live and head - self.cursor > self.settings.fell_behind_events:
                    live = False
                    self.delivered = max(self.delivered, self.cursor)
                    self.hub.metrics.fell_behind()
                    yield _message(fell_behind_position=self.cursor)
                page = await self._next_page(head)
                if page.records:
                    if self.credits is not None:
                        self.credits -= len(page.records)
                    reported = records.decode(page.records[-1]).position
                    # Before the yield: the client may ack it as soon as it arrives.
                    self.delivered = max(self.delivered, reported)
                    self.hub.metrics.delivered(max(0, head - reported))
                    yield _EVENTS_TAG + _framed(records.repeated_events(page.records))
                    last_sent = time.monotonic()
                self.cursor = max(self.cursor, page.last_visited_key)
                if self.query.filtered and self.cursor - reported >= self.checkpoint_interval:
                    reported = self.delivered = self.cursor
                    yield _message(checkpoint_position=self.cursor)
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= self.heartbeat:
                    # A long catch-up that finds nothing to send is no silence.
                    yield _heartbeat()
                    last_sent = time.monotonic()
                continue
            if not live and self.cursor >= head:
                live = True
                # (A page may have read a commit whose head was not out yet.)
                self.delivered = max(head, self.cursor)
                yield _message(caught_up_position=self.delivered)
                last_sent = time.monotonic()
                continue
            idle_for = time.monotonic() - last_sent
            if idle_for >= self.heartbeat:
                yield _heartbeat()
                last_sent = time.monotonic()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.heartbeat - idle_for)

    async def _next_page(self, head: int) -> Page:
        want = self.settings.page_events
        if self.credits is not None:
            want = min(want, self.credits)
        query = dataclasses.replace(self.query, start=self.cursor + 1)
        # A filtered page visits at most checkpoint_interval records, and never
        # more than a plain page's budget: one read transaction stays short and
        # a reader thread is never held long, whatever the client asked for.
        scan = min(self.checkpoint_interval, self.settings.max_scan) if self.query.filtered else 0
        args = (query, None, want, self.settings.page_bytes, scan)
        if head - self.cursor <= self.settings.inline_read_events:
            return self.hub.store.read_page(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.hub.readers, self.hub.store.read_page, *args)


def _query(options: pb.SubscribeOptions) -> ReadQuery:
    f = options.filter
    validation.check_filter(f, "options.filter")
    return ReadQuery(
        stream_prefixes=tuple(f.stream_prefixes),
        streams=frozenset(f.streams),
        event_types=frozenset(f.event_types),
        correlation_id=f.correlation_id,
    )


def _framed(payload: bytes) -> bytes:
    return records.varint(len(payload)) + payload


def _message(**fields: int) -> bytes:
    """A SubscribeResponse with one position field set (caught_up_position, ...)."""
    ((name, value),) = fields.items()
    response = pb.SubscribeResponse()
    setattr(response, name, value)
    return response.SerializeToString()


def _heartbeat() -> bytes:
    ts = Timestamp()
    ts.GetCurrentTime()
    return pb.SubscribeResponse(heartbeat=ts).SerializeToString()
