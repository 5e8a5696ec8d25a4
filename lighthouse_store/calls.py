"""The calls in flight, so that shutdown ends streams promptly.

On SIGTERM every streaming call (Read, Subscribe) is told to end at its next
step with ShuttingDown: UNAVAILABLE, reason ``SHUTTING_DOWN``, failure class
``recoverable``, sent as any error is (``status.py``), so a client resumes
elsewhere or later from the last position it received (as KurrentDB and NATS
JetStream clients do when a node leaves). A Read checks between pages; a
subscription is woken (``subscriptions.py``). Unary calls (appends that
were accepted, GetEvent, GetInfo) get the whole grace to finish.

A stream whose client has stopped reading (or reads too slowly for the
message in hand) cannot be told: its handler waits for HTTP/2 flow control
to take a message the client does not take, and the status (trailers) may
only follow the data already queued. Such a stream gets :data:`STREAM_END_S`
after the drain, not the grace; then the server cancels it, and
its client sees UNAVAILABLE from gRPC itself ("Cancelling all calls"), which
carries no error details, since a cancel sends only grpc-status and
grpc-message. UNAVAILABLE is retryable whatever its details, and the client
library resumes on it (``_subscription.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["STREAM_END_S", "Calls"]

# How long streams get to end once told; what a stalled reader adds to a shutdown.
STREAM_END_S = 1.0


class Calls:
    """Counts the calls in flight by kind, and says when shutdown has begun."""

    def __init__(self) -> None:
        self._streams = 0
        self._unary = 0
        self._changed = asyncio.Event()
        self.closing = False

    @contextmanager
    def track(self, *, stream: bool) -> Iterator[None]:
        if stream:
            self._streams += 1
        else:
            self._unary += 1
        try:
            yield
        finally:
            if stream:
                self._streams -= 1
            else:
                self._unary -= 1
            self._changed.set()

    @property
    def streams(self) -> int:
        return self._streams

    @property
    def unary(self) -> int:
        return self._unary

    def shut_down(self) -> None:
        """From now on, streams end at their next step (ShuttingDown)."""
        self.closing = True

    async def settled(self, *, streams: float, unary: float) -> None:
        """Wait until the streams have ended (at most ``streams`` seconds, and
        never past ``unary``), then until the unary calls have (at most
        ``unary`` seconds in all)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        await self._until(lambda: self._streams == 0, start + min(streams, unary))
        await self._until(lambda: self._unary == 0, start + unary)

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not done() and (left := deadline - loop.time()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return
