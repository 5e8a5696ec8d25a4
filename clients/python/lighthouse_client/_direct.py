"""The blocking client's calls on the calling thread.

``StoreClient`` runs ``AsyncStoreClient``'s code. Run on the client's event-loop
thread, a call pays for the trip there and back: two thread wake-ups, and a third
for ``grpc.aio``'s poller thread: more than the rest of the client's side of a
call (perf/RESULTS.md, "Client library cost").
So the unary calls (append, the reads, get_event, info) run on the calling
thread instead, through a :class:`DirectClient`: an ``AsyncStoreClient`` whose
stub is a synchronous channel's (:class:`SyncStub`, with ``grpc.aio``'s call
shapes) and whose retries wait by blocking the thread. Nothing in such a call
ever suspends, so :func:`run_here` drives its coroutine to the end with one
``send``. The same layers, and the same retry policy, circuit breaker and read
cache objects as the client on the loop.

Not where the loop is needed: with an outbox (its flush lock and its background
flusher live on the loop) or tracing (its interceptors are ``grpc.aio``'s), every
call goes to the loop, as do subscriptions always.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from lighthouse_client._security import Metadata
from lighthouse_client.aio import AsyncStoreClient
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

__all__ = ["DirectClient", "SyncStub", "run_here"]

T = TypeVar("T")


class SyncStub:
    """The service's stub on a synchronous channel, called as ``grpc.aio``'s
    is: the unary calls are awaitables, ``Read`` an async iterator; they block
    instead of suspending."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.EventStoreServiceStub(channel)

    async def Append(self, request: Any, timeout: float, metadata: Metadata | None) -> Any:
        return self._stub.Append(request, timeout=timeout, metadata=metadata)

    async def GetEvent(self, request: Any, timeout: float, metadata: Metadata | None) -> Any:
        return self._stub.GetEvent(request, timeout=timeout, metadata=metadata)

    async def GetInfo(self, request: Any, timeout: float, metadata: Metadata | None) -> Any:
        return self._stub.GetInfo(request, timeout=timeout, metadata=metadata)

    def Read(self, request: Any, timeout: float, metadata: Metadata | None) -> AsyncIterator[Any]:
        async def pages() -> AsyncIterator[Any]:
            for page in self._stub.Read(request, timeout=timeout, metadata=metadata):
                yield page

        return pages()


class DirectClient(AsyncStoreClient):
    """``on_loop``'s unary calls, for the calling thread (see the module docstring)."""

    def __init__(
        self, on_loop: AsyncStoreClient, channel_options: Sequence[tuple[str, Any]]
    ) -> None:
        super().__init__(
            on_loop.target,
            timeout=on_loop.timeout,
            retry=on_loop.retry,
            breaker=on_loop.breaker,
            cache=on_loop.cache,
            channel_options=channel_options,
            tls=on_loop.tls,
            token=on_loop._token,
        )
        self._caller.sleep = _sleep_here
        if self.tls is None:
            self._sync_channel = grpc.insecure_channel(self.target, options=self._options)
        else:
            credentials = self.tls.credentials()
            self._sync_channel = grpc.secure_channel(self.target, credentials, self._options)
        self._stub = SyncStub(self._sync_channel)

    def close_channel(self) -> None:
        self._sync_channel.close()


async def _sleep_here(seconds: float) -> None:
    time.sleep(seconds)


def run_here(coro: Coroutine[Any, Any, T]) -> T:
    """Run a :class:`DirectClient` call's coroutine on this thread, to its end."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a StoreClient call waited for an event loop on the calling thread")
