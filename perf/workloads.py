"""Client side of the perf harness: what one client does, in a worker process.

A :class:`Spec` says what to call (an empty echo RPC, a single-event or batched
Append, GetEvent, a full ``$all`` Read), how often (``max_calls``) and for how
long (``duration_s``). Every loop stops at whichever bound comes first.

Clients run only in worker processes (``pool.py``), never in the process that
coordinates: :func:`worker_main` takes a task, builds its clients (synchronous
stubs on threads, or ``grpc.aio`` tasks), each with its own channel and TCP
connection, warms them up, reports ready, waits for the shared start instant,
calls until the deadline or the call cap, and sends back one Result per client.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal, Protocol

import grpc

from lighthouse_client import aio as client_aio
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

Op = Literal["echo", "append", "get_event", "replay"]
Style = Literal["sync", "asyncio"]

ECHO_METHOD = "/lighthouse.perf.v1.Echo/Echo"
EVENT_BYTES = 1024
EVENT_TYPE = "BenchEvent"
CONTENT_TYPE = "application/octet-stream"
RPC_TIMEOUT_S = 30.0
MAX_ERRORS = 20  # a client stops after this many failed calls
# The client library's own channel options (message sizes, keepalive, gRPC's
# built-in retries off: about 30 µs less per call here), so the harness's
# calls cost what a user's do, and one connection per client, as separate
# client programs would have.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *client_aio.CHANNEL_OPTIONS,
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class Spec:
    """What each client of a run does."""

    op: Op
    address: str
    duration_s: float
    max_calls: int
    warmup_calls: int = 0
    events_per_call: int = 1  # append
    stream: str = "bench"  # append: client i writes to "<stream>-<i>"
    event_ids: tuple[str, ...] = ()  # get_event: ids to pick from at random
    replay_count: int = 0  # replay: max_count of the $all Read
    keep_ids: bool = False  # append: return the event ids written (timed calls only)
    # append: ids with random leading 32 bits (as UUIDv4 ids are, for the id
    # index's B-tree) instead of one client's ids counting up (as UUIDv7 do)
    random_ids: bool = False
    # "" = the harness's own gRPC stubs (requests built ahead, pre-serialized);
    # else the name of a system's own Python client (user_clients.py), used as
    # a user's program would use it: "lighthouse", or a peer's ("umadb")
    client: str = ""


@dataclass
class Result:
    """What one client did in the timed part of a run."""

    calls: int = 0
    events: int = 0
    start_ns: int = 0  # the shared start instant
    end_ns: int = 0  # when this client's last call completed
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    event_ids: list[str] = field(default_factory=list)


# -- requests --------------------------------------------------------------


class Requests:
    """Builds the next request of one client; cheap, so the client measures the server."""

    def __init__(self, spec: Spec, client_index: int) -> None:
        self.spec = spec
        self.stream = f"{spec.stream}-{client_index}"
        self.payload = os.urandom(EVENT_BYTES)
        # Canonical UUIDv4 text: a random 8-4-4-4- prefix per client and a
        # 12-hex-digit counter, unique without a syscall per event.
        self._prefix = str(uuid.uuid4())[:24]
        self._counter = 0
        self._template: bytes | None = None
        self._offsets: list[int] = []
        self._rng = random.Random(client_index)
        self.keep_ids = False
        self.ids: list[str] = []  # of appends written (see written())
        self._last_ids: list[str] = []  # of the append built last

    def next(self) -> Any:
        op = self.spec.op
        if op == "echo":
            return b""
        if op == "append":
            return self._append()
        if op == "get_event":
            return pb.GetEventRequest(event_id=self._rng.choice(self.spec.event_ids))
        return pb.ReadRequest(stream="$all", from_position=1, max_count=self.spec.replay_count)

    def _append(self) -> bytes:
        """The next append, serialized. The first call builds a template with
        protobuf; later ones copy it and write fresh 12-hex-digit id counters
        at their offsets, so the client spends microseconds, not the time of
        encoding 100 events, between calls (the rate is the server's). With
        ``random_ids``, each id's first 8 hex digits are random too (one
        ``os.urandom`` per call): still a valid UUIDv4, unique by its counter."""
        n = self.spec.events_per_call
        if self._template is None:
            ids = [f"{self._prefix}{0xFFFFFFFFFFFF - k:012x}" for k in range(n)]
            template = pb.AppendRequest(
                stream=self.stream,
                events=[
                    pb.ProposedEvent(
                        event_id=i,
                        event_type=EVENT_TYPE,
                        data=self.payload,
                        content_type=CONTENT_TYPE,
                    )
                    for i in ids
                ],
            ).SerializeToString()
            self._offsets = [template.index(i.encode()) for i in ids]
            self._template = template
        buf = bytearray(self._template)
        if self.spec.random_ids:
            lead = os.urandom(4 * n).hex().encode()
            for k, offset in enumerate(self._offsets):
                buf[offset : offset + 8] = lead[8 * k : 8 * k + 8]
        for offset in self._offsets:
            self._counter += 1
            buf[offset + 24 : offset + 36] = b"%012x" % self._counter
        if self.keep_ids:
            self._last_ids = [buf[o : o + 36].decode() for o in self._offsets]
        return bytes(buf)

    def written(self) -> None:
        """The request built last succeeded: keep its ids (with ``keep_ids``),
        so only ids that were written are offered to GetEvent."""
        if self.keep_ids:
            self.ids += self._last_ids
            self._last_ids = []


def _events_in(op: Op, spec: Spec, response: Any) -> int:
    if op == "append":
        return spec.events_per_call
    if op == "get_event":
        return 1
    return 0


# Appends go out pre-serialized (bytes, no request serializer).
APPEND_METHOD = "/lighthouse.store.v1.EventStoreService/Append"


def _method(spec: Spec, channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The gRPC method a client of ``spec`` calls, on a sync or an asyncio channel."""
    if spec.op == "echo":
        return channel.unary_unary(ECHO_METHOD, _registered_method=True)
    stub = pb_grpc.EventStoreServiceStub(channel)
    if spec.op == "replay":
        return stub.Read
    if spec.op == "append":
        return channel.unary_unary(
            APPEND_METHOD,
            _registered_method=True,
            response_deserializer=pb.AppendResponse.FromString,
        )
    return stub.GetEvent


# -- synchronous clients ---------------------------------------------------


def _sync_call(spec: Spec, channel: grpc.Channel) -> Callable[[Any], int]:
    method = _method(spec, channel)
    if spec.op == "replay":

        def call_replay(request: Any) -> int:
            n = 0
            for page in method(request, timeout=RPC_TIMEOUT_S * 4):
                n += len(page.events)
            return n

        return call_replay

    def call_unary(request: Any) -> int:
        return _events_in(spec.op, spec, method(request, timeout=RPC_TIMEOUT_S))

    return call_unary


class SyncClient:
    def __init__(self, spec: Spec, client_index: int) -> None:
        self.spec = spec
        self.requests = Requests(spec, client_index)
        self.channel = grpc.insecure_channel(spec.address, options=CHANNEL_OPTIONS)
        self.call = _sync_call(spec, self.channel)
        self.result = Result()

    def warmup(self) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT_S)
        for _ in range(self.spec.warmup_calls):
            self.call(self.requests.next())

    def run(self, start_ns: int) -> None:
        requests = self.requests
        requests.keep_ids = self.spec.keep_ids
        timed_loop(self.spec, self.result, start_ns, requests.next, self.call, requests.written)
        self.result.event_ids = requests.ids

    def close(self) -> None:
        self.channel.close()


class _Timed:
    """The bookkeeping of a timed loop, for a synchronous or an asyncio caller
    alike: iterating gives the next request (built by ``prepare``, not timed)
    until the deadline or the call cap; the clock starts as the request is
    handed out, so the caller calls at once and then reports :meth:`done`
    with the events the call carried, or :meth:`failed`."""

    def __init__(
        self,
        spec: Spec,
        res: Result,
        start_ns: int,
        prepare: Callable[[], Any],
        written: Callable[[], None],
    ) -> None:
        res.start_ns = start_ns
        self.spec, self.res = spec, res
        self.deadline = start_ns + int(spec.duration_s * 1e9)
        self.prepare, self.written = prepare, written
        self.t0 = 0

    def __iter__(self) -> Iterator[Any]:
        res, cap, clock, deadline = self.res, self.spec.max_calls, time.monotonic_ns, self.deadline
        while res.calls < cap and clock() < deadline:
            request = self.prepare()
            self.t0 = clock()
            yield request

    def done(self, events: int) -> None:
        t1 = time.monotonic_ns()
        self.written()
        res = self.res
        res.latencies_ns.append(t1 - self.t0)
        res.calls += 1
        res.events += events
        res.end_ns = t1

    def failed(self, exc: BaseException) -> bool:
        """Count a failed call (:func:`_note_error`); True when the loop should stop."""
        return _note_error(self.res, exc)


def timed_loop(
    spec: Spec,
    res: Result,
    start_ns: int,
    prepare: Callable[[], Any],
    call: Callable[[Any], int],
    written: Callable[[], None] = lambda: None,
    errors: tuple[type[BaseException], ...] = (grpc.RpcError,),
) -> None:
    """From the start instant, until the deadline or the call cap: build the
    next request (``prepare``, not timed), time ``call`` (which returns the
    events it carried), then ``written``. A call raising one of ``errors``
    counts as failed (:func:`_note_error`)."""
    loop = _Timed(spec, res, start_ns, prepare, written)
    sleep_until(start_ns)
    for request in loop:
        try:
            loop.done(call(request))
        except errors as exc:
            if loop.failed(exc):
                break


async def timed_loop_async(
    spec: Spec,
    res: Result,
    start_ns: int,
    prepare: Callable[[], Any],
    call: Callable[[Any], Awaitable[int]],
    written: Callable[[], None] = lambda: None,
    errors: tuple[type[BaseException], ...] = (grpc.RpcError,),
) -> None:
    """:func:`timed_loop` for an asyncio client."""
    loop = _Timed(spec, res, start_ns, prepare, written)
    delay = (start_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    for request in loop:
        try:
            loop.done(await call(request))
        except errors as exc:
            if loop.failed(exc):
                break


def _note_error(res: Result, exc: BaseException) -> bool:
    """Count a failed call; True when the client should give up."""
    res.errors += 1
    if not res.first_error:
        res.first_error = f"{type(exc).__name__}: {exc}"[:2000]
    return res.errors >= MAX_ERRORS


def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


class ThreadClient(Protocol):
    """One synchronous client of a run (SyncClient, or a system's own client)."""

    result: Result

    def warmup(self) -> None: ...
    def run(self, start_ns: int) -> None: ...
    def close(self) -> None: ...


def _run_sync(conn: Connection, spec: Spec, base_index: int, n: int) -> list[Result]:
    return run_threads(conn, spec, [SyncClient(spec, base_index + i) for i in range(n)])


def run_threads(conn: Connection, spec: Spec, clients: Sequence[ThreadClient]) -> list[Result]:
    """Warm every client up, report ready, wait for the start instant, run
    them (one thread each, if more than one), return their Results; close them."""
    try:
        for c in clients:
            c.warmup()
        conn.send(("ready",))
        start_ns = _recv_go(conn)
        if len(clients) == 1:
            clients[0].run(start_ns)
        else:
            threads = [threading.Thread(target=c.run, args=(start_ns,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join(spec.duration_s + RPC_TIMEOUT_S * 5)
        return [c.result for c in clients]
    finally:
        for c in clients:
            c.close()


def _recv_go(conn: Connection) -> int:
    if not conn.poll(RPC_TIMEOUT_S * 4):
        raise TimeoutError("no start signal from the coordinator")
    msg = conn.recv()
    if msg[0] != "go":
        raise RuntimeError(f"expected go, got {msg[0]!r}")
    return int(msg[1])


# -- asyncio clients -------------------------------------------------------


def _async_call(spec: Spec, channel: grpc.aio.Channel) -> Callable[[Any], Awaitable[int]]:
    method = _method(spec, channel)
    if spec.op == "replay":

        async def call_replay(request: Any) -> int:
            n = 0
            async for page in method(request, timeout=RPC_TIMEOUT_S * 4):
                n += len(page.events)
            return n

        return call_replay

    async def call_unary(request: Any) -> int:
        return _events_in(spec.op, spec, await method(request, timeout=RPC_TIMEOUT_S))

    return call_unary


async def _async_client(
    spec: Spec, client_index: int, ready: asyncio.Queue[int], go: asyncio.Future[int]
) -> Result:
    requests = Requests(spec, client_index)
    res = Result()
    async with grpc.aio.insecure_channel(spec.address, options=CHANNEL_OPTIONS) as channel:
        call = _async_call(spec, channel)
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        for _ in range(spec.warmup_calls):
            await call(requests.next())
        await ready.put(client_index)
        start_ns = await go
        requests.keep_ids = spec.keep_ids
        await timed_loop_async(spec, res, start_ns, requests.next, call, requests.written)
        res.event_ids = requests.ids
    return res


# One asyncio client of a run: given the ready queue and the start future, it
# connects, warms up, puts its index on the queue, awaits the start instant,
# runs, and returns its Result.
TaskClient = Callable[["asyncio.Queue[int]", "asyncio.Future[int]"], Coroutine[Any, Any, Result]]


async def _run_async_main(conn: Connection, spec: Spec, base_index: int, n: int) -> list[Result]:
    clients = [functools.partial(_async_client, spec, base_index + i) for i in range(n)]
    return await run_tasks(conn, spec, clients)


async def run_tasks(conn: Connection, spec: Spec, clients: Sequence[TaskClient]) -> list[Result]:
    """Run asyncio clients on this loop, with the same ready/start protocol as
    :func:`run_threads`. A client that fails before it is ready fails the run
    at once."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[int] = asyncio.Queue()
    go: asyncio.Future[int] = loop.create_future()
    tasks = [asyncio.create_task(client(ready, go)) for client in clients]
    try:
        for _ in clients:
            getter = asyncio.ensure_future(ready.get())
            done, _ = await asyncio.wait(
                {getter, *tasks}, timeout=RPC_TIMEOUT_S * 4, return_when=asyncio.FIRST_COMPLETED
            )
            if getter not in done:
                getter.cancel()
                for t in tasks:
                    if t.done():
                        t.result()  # raises the client's error
                raise TimeoutError("a client did not become ready")
        conn.send(("ready",))
        go.set_result(await loop.run_in_executor(None, _recv_go, conn))
        limit = spec.duration_s + RPC_TIMEOUT_S * 5
        return list(await asyncio.wait_for(asyncio.gather(*tasks), limit))
    finally:
        for t in tasks:
            t.cancel()


def _run_async(conn: Connection, spec: Spec, base_index: int, n: int) -> list[Result]:
    return asyncio.run(_run_async_main(conn, spec, base_index, n))


# -- worker process ----------------------------------------------------------


def worker_main(conn: Connection) -> None:
    """Entry point of a client process: run tasks until told to exit."""
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "exit":
                return
            try:
                if msg[0] == "job":  # ("job", fn, args): fn(conn, *args), e.g. subscribers.py
                    conn.send(("result", msg[1](conn, *msg[2])))
                    continue
                _, spec, style, base_index, n = msg
                if spec.client:  # a system's own client library
                    import user_clients

                    runner = user_clients.run_async if style == "asyncio" else user_clients.run_sync
                else:
                    runner = _run_async if style == "asyncio" else _run_sync
                conn.send(("result", runner(conn, spec, base_index, n)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError, KeyboardInterrupt):  # the coordinator is gone
        return
