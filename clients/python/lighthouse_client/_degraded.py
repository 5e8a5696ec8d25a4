"""Degraded mode: what the client does while the daemon cannot be reached.

The policy, in one place (the calls themselves are ``_calls.Caller``'s):

- Reads (``read_stream``, ``read_all``, ``get_event``) with a ``ReadCache``:
  what the daemon answers fills the cache; a read that cannot reach the
  daemon is answered from the cache, marked stale (``fetched_at``, and for
  reads ``head_position``, the last head the client saw), or raises
  Unavailable when the cache cannot answer it honestly (``_cache.py`` says
  what it can). A read whose events had started to arrive is not answered
  stale: the daemon is reachable, only slow, and a stale answer would hide
  that; the caller gets the error.
- Appends with an ``Outbox``: an append that cannot reach the daemon is
  stored durably and returned with ``queued=True``. Outbox first: while the
  outbox holds entries, an append flushes it before anything else and, to
  keep the order, is never sent ahead of what is left (it is queued behind
  it, or, when the flush stopped at a restart-required error, that error is
  raised and nothing of this append is sent or queued).
- Flushing sends the entries in ``seq`` order; an entry the daemon refuses is
  handled by its error's failure class (``_outbox.flush_action``): human
  intervention dead-letters it (and calls ``on_conflict``) and the flush goes
  on; recoverable or restart-required stops the flush there, the entry and
  everything behind it kept. A background task flushes every
  ``interval`` seconds while the breaker is not open.
- A call with a fallback (a read with a cache, an append or a flush with an
  outbox) does not wait for an open circuit breaker: it takes the fallback
  at once. Calls without one wait for the breaker's half-open within their
  deadline (``_retry.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence, Sized

from lighthouse_client._breaker import BreakerState
from lighthouse_client._cache import ReadCache
from lighthouse_client._calls import UNREACHABLE, Caller, Rpc
from lighthouse_client._outbox import DeadLetter, FlushAction, Outbox, flush_action
from lighthouse_client._types import (
    AppendResult,
    EventResult,
    ExpectedRevision,
    NewEvent,
    ReadResult,
    RecordedEvent,
)
from lighthouse_client.exceptions import StoreError, Unavailable

__all__ = ["AppendRpc", "CachedAnswer", "DegradedMode"]

log = logging.getLogger("lighthouse_client")

# Builds one append's RPC (the request is built once, so it is checked at once).
AppendRpc = Callable[[str, ExpectedRevision, Sequence[NewEvent]], Rpc[AppendResult]]
# The cache's answer to a read: the events and the oldest fetched_at they rest on.
CachedAnswer = Callable[[ReadCache], tuple[list[RecordedEvent], float] | None]


class DegradedMode:
    def __init__(
        self,
        call: Caller,
        append_rpc: AppendRpc,
        *,
        cache: ReadCache | None,
        outbox: Outbox | None,
        on_conflict: Callable[[DeadLetter], None] | None,
    ) -> None:
        self._call = call
        self._append_rpc = append_rpc
        self.cache = cache
        self.outbox = outbox
        self.on_conflict = on_conflict
        self._flush_lock = asyncio.Lock()

    # -- reads ---------------------------------------------------------------

    async def read(
        self,
        rpc: Rpc[Sequence[RecordedEvent]],
        timeout: float,
        cached: CachedAnswer,
        arrived: Sized,
    ) -> ReadResult:
        """``rpc``'s events, or the cache's when the daemon cannot be reached
        and nothing had ``arrived`` from it in this read."""
        try:
            # Once events have arrived, the cache is no answer (see above).
            events = await self._call(
                rpc, _deadline(timeout), fallback=lambda: self.cache is not None and not arrived
            )
        except UNREACHABLE as exc:
            if self.cache is None or len(arrived):
                raise
            answer = cached(self.cache)
            if answer is None:
                raise Unavailable(
                    f"the daemon is unreachable and the cache cannot answer this read ({exc})"
                ) from exc
            stale, fetched_at = answer
            head = self.cache.head_position
            return ReadResult(tuple(stale), stale=True, fetched_at=fetched_at, head_position=head)
        if self.cache is not None:
            self.cache.put(events)
        return ReadResult(tuple(events))

    async def get_event(
        self, rpc: Rpc[RecordedEvent], timeout: float, event_id: str
    ) -> EventResult:
        try:
            event = await self._call(rpc, _deadline(timeout), fallback=self.cache is not None)
        except UNREACHABLE as exc:
            if self.cache is None:
                raise
            hit = self.cache.get_event(event_id)
            if hit is None:
                raise Unavailable(
                    f"the daemon is unreachable and event {event_id} is not cached ({exc})"
                ) from exc
            return EventResult(hit[0], stale=True, fetched_at=hit[1])
        if self.cache is not None:
            self.cache.put([event])
        return EventResult(event)

    # -- appends -------------------------------------------------------------

    async def append(
        self,
        stream: str,
        expected: ExpectedRevision,
        events: Sequence[NewEvent],
        timeout: float,
    ) -> AppendResult:
        rpc = self._append_rpc(stream, expected, events)
        if self.outbox is not None and len(self.outbox):
            _, stopped_by = await self.flush(timeout)
            if len(self.outbox):
                # (stopped_by is None when entries were queued during the flush.)
                if stopped_by is not None and flush_action(stopped_by) is FlushAction.FAIL:
                    raise stopped_by
                return self._queue(stream, expected, events)
        try:
            return await self._call(rpc, _deadline(timeout), fallback=self.outbox is not None)
        except UNREACHABLE:
            if self.outbox is None:
                raise
            return self._queue(stream, expected, events)

    def _queue(
        self, stream: str, expected: ExpectedRevision, events: Sequence[NewEvent]
    ) -> AppendResult:
        assert self.outbox is not None
        self.outbox.enqueue(stream, expected, events)
        return AppendResult(0, 0, 0, queued=True)

    async def flush(self, timeout: float) -> tuple[int, StoreError | None]:
        """Send the queued appends in order (each within ``timeout``); returns
        how many were written and the error that stopped the flush (None when
        it got through every entry it saw)."""
        if self.outbox is None:
            return 0, None
        sent = 0
        async with self._flush_lock:
            for entry in self.outbox.pending():
                rpc = self._append_rpc(entry.stream, entry.expected, entry.events)
                try:
                    await self._call(rpc, _deadline(timeout), fallback=True)
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

    async def flush_forever(self, interval: float, timeout: float) -> None:
        """Flush every ``interval`` seconds while the outbox holds entries and
        the breaker is not open; never stops on an error (it is logged)."""
        while True:
            await asyncio.sleep(interval)
            # state, not allow(): allow() would take the half-open probe slot
            # that the flush's own call needs.
            if (
                self.outbox is not None
                and len(self.outbox)
                and self._call.breaker.state is not BreakerState.OPEN
            ):
                try:
                    await self.flush(timeout)
                except Exception:  # keep flushing later; never kill the task
                    log.exception("outbox flush failed")


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout
