"""Measurements through a system's own Python client, as a user's program holds it.

The harness's own clients (``workloads.py``) call the daemon through bare gRPC
stubs with requests built ahead: they measure the server. To compare with
another event store, each system is called instead through the client library
its users install: ours (``lighthouse_client.AsyncStoreClient``; or
``StoreClient``, ``OURS_SYNC``, for step 9: ``client_phase.py``) or a peer's
(``peers.py``). A :class:`Spec` with ``client`` set runs here, in a client
process, on the same ready/start protocol and with the same timed loop as the
harness's own clients, so the counts, windows and CPU accounting are the same.

A client of a system (a "driver") appends events of :data:`workloads.EVENT_BYTES`
to its own stream, reads the log from its first event, and tells the head. It is
synchronous (run one per thread) or asyncio (run one per task on one event loop),
whichever its library offers (:func:`make_sync`, :func:`make_async`). Per op:

* ``append``: ``events_per_call`` new events per call, built before the timer
  (each with a fresh id, as each library's users make them), to ``<stream>-<i>``;
* ``replay``: in the warmup, top the store up to ``replay_count`` events with
  100-event appends; then one timed read of ``replay_count`` events from the
  first, counted as they reach the caller.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

import peers
from workloads import (
    EVENT_BYTES,
    EVENT_TYPE,
    RPC_TIMEOUT_S,
    Result,
    Spec,
    run_tasks,
    run_threads,
    timed_loop,
    timed_loop_async,
)

from lighthouse_client import AppendResult, AsyncStoreClient, NewEvent, StoreClient

OURS = "lighthouse"
OURS_SYNC = "lighthouse-sync"  # ours through StoreClient (client_phase.py)
FILL_BATCH = 100  # events per append when a replay tops the store up


class SyncDriver(Protocol):
    """One synchronous client of a system, bound to one stream."""

    def batch(self, events: int) -> Any:
        """New events for one append (not timed)."""
        ...

    def append(self, batch: Any) -> int:
        """Append ``batch`` to this client's stream; the events written."""
        ...

    def replay(self, count: int) -> int:
        """Read up to ``count`` events from the first; the events received."""
        ...

    def head(self) -> int:
        """Events in the store (the last position; positions start at 1)."""
        ...

    def close(self) -> None: ...


class AsyncDriver(Protocol):
    """:class:`SyncDriver` for an asyncio client library."""

    def batch(self, events: int) -> Any: ...
    async def append(self, batch: Any) -> int: ...
    async def replay(self, count: int) -> int: ...
    async def head(self) -> int: ...
    async def close(self) -> None: ...


# -- ours ------------------------------------------------------------------------


class _OurEvents:
    """What both of our drivers do alike: a stream, and new events for it."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.payload = os.urandom(EVENT_BYTES)

    def batch(self, events: int) -> list[NewEvent]:
        return [
            NewEvent(EVENT_TYPE, data=self.payload, content_type="application/octet-stream")
            for _ in range(events)
        ]

    @staticmethod
    def written(result: AppendResult, batch: list[NewEvent]) -> int:
        """The events an append wrote: all of ``batch``, or it failed."""
        if result.queued:
            raise RuntimeError("the append was queued, not written")
        return len(batch)


class LighthouseDriver(_OurEvents):
    """Our asyncio client with its defaults (retries, circuit breaker; no cache
    or outbox): ``append(stream, [NewEvent, ...])``, whose events get UUIDv7 ids,
    and ``read_all(from_position=1, max_count=N)``, which returns the events
    parsed into ``RecordedEvent`` values."""

    def __init__(self, address: str, stream: str) -> None:
        super().__init__(stream)
        self.client = AsyncStoreClient(address, timeout=RPC_TIMEOUT_S)

    async def append(self, batch: list[NewEvent]) -> int:
        return self.written(await self.client.append(self.stream, batch), batch)

    async def replay(self, count: int) -> int:
        read = await self.client.read_all(
            from_position=1, max_count=count, timeout=RPC_TIMEOUT_S * 4
        )
        return len(read)

    async def head(self) -> int:
        return (await self.client.info()).head_position

    async def close(self) -> None:
        await self.client.close()


class LighthouseSyncDriver(_OurEvents):
    """:class:`LighthouseDriver` through our blocking client, ``StoreClient``."""

    def __init__(self, address: str, stream: str) -> None:
        super().__init__(stream)
        self.client = StoreClient(address, timeout=RPC_TIMEOUT_S)

    def append(self, batch: list[NewEvent]) -> int:
        return self.written(self.client.append(self.stream, batch), batch)

    def replay(self, count: int) -> int:
        read = self.client.read_all(from_position=1, max_count=count, timeout=RPC_TIMEOUT_S * 4)
        return len(read)

    def head(self) -> int:
        return self.client.info().head_position

    def close(self) -> None:
        self.client.close()


def make_sync(name: str, address: str, stream: str) -> SyncDriver:
    """The synchronous driver of system ``name``: ours (``StoreClient``), or a peer's."""
    if name == OURS_SYNC:
        return LighthouseSyncDriver(address, stream)
    driver: SyncDriver = _peer_driver(name, "sync", address, stream)
    return driver


def make_async(name: str, address: str, stream: str) -> AsyncDriver:
    """The asyncio driver of system ``name``: ours, or a peer's."""
    if name == OURS:
        return LighthouseDriver(address, stream)
    driver: AsyncDriver = _peer_driver(name, "asyncio", address, stream)
    return driver


def _peer_driver(name: str, style: str, address: str, stream: str) -> Any:
    peer = peers.PEERS[name]
    if peer.style != style:
        raise ValueError(f"{name}'s client is not {'synchronous' if style == 'sync' else style}")
    return importlib.import_module(peer.module).driver(address, stream)


def style(name: str) -> str:
    """How system ``name``'s clients run: "asyncio" (tasks) or "sync" (threads)."""
    if name in (OURS, OURS_SYNC):
        return "asyncio" if name == OURS else "sync"
    return peers.PEERS[name].style


# -- running a spec ---------------------------------------------------------------


class ThreadUser:
    """A synchronous driver as one client of a run (``workloads.ThreadClient``)."""

    def __init__(self, spec: Spec, index: int) -> None:
        self.spec = spec
        self.driver = make_sync(spec.client, spec.address, f"{spec.stream}-{index}")
        self.result = Result()

    def warmup(self) -> None:
        d, spec = self.driver, self.spec
        if spec.op == "replay":
            missing = spec.replay_count - d.head()
            for _ in range(max(0, -(-missing // FILL_BATCH))):
                d.append(d.batch(FILL_BATCH))
            return
        for _ in range(spec.warmup_calls):
            d.append(d.batch(spec.events_per_call))

    def run(self, start_ns: int) -> None:
        d, spec = self.driver, self.spec
        if spec.op == "replay":
            prepare: Callable[[], Any] = lambda: spec.replay_count  # noqa: E731
            call: Callable[[Any], int] = d.replay
        elif spec.op == "append":
            prepare, call = functools.partial(d.batch, spec.events_per_call), d.append
        else:
            raise ValueError(f"op {spec.op!r} is not measured through a user client")
        timed_loop(spec, self.result, start_ns, prepare, call, errors=(Exception,))

    def close(self) -> None:
        self.driver.close()


async def _task_user(
    spec: Spec, index: int, ready: asyncio.Queue[int], go: asyncio.Future[int]
) -> Result:
    """An asyncio driver as one client of a run (``workloads.TaskClient``)."""
    d = make_async(spec.client, spec.address, f"{spec.stream}-{index}")
    res = Result()
    try:
        if spec.op == "replay":
            missing = spec.replay_count - await d.head()
            for _ in range(max(0, -(-missing // FILL_BATCH))):
                await d.append(d.batch(FILL_BATCH))
            prepare: Callable[[], Any] = lambda: spec.replay_count  # noqa: E731
            call: Callable[[Any], Awaitable[int]] = d.replay
        elif spec.op == "append":
            for _ in range(spec.warmup_calls):
                await d.append(d.batch(spec.events_per_call))
            prepare, call = functools.partial(d.batch, spec.events_per_call), d.append
        else:
            raise ValueError(f"op {spec.op!r} is not measured through a user client")
        await ready.put(index)
        start_ns = await go
        await timed_loop_async(spec, res, start_ns, prepare, call, errors=(Exception,))
    finally:
        await d.close()
    return res


def run_sync(conn: Connection, spec: Spec, base_index: int, n: int) -> list[Result]:
    """``n`` clients of ``spec.client``, one thread each (``workloads.worker_main``)."""
    return run_threads(conn, spec, [ThreadUser(spec, base_index + i) for i in range(n)])


def run_async(conn: Connection, spec: Spec, base_index: int, n: int) -> list[Result]:
    """``n`` clients of ``spec.client``, asyncio tasks on one event loop."""
    clients = [functools.partial(_task_user, spec, base_index + i) for i in range(n)]
    return asyncio.run(run_tasks(conn, spec, clients))
