"""Client side of the subscription measurements: jobs that run in client processes.

Each job is a module-level function ``job(conn, *args)`` that a client process
of the pool runs (``ClientPool.start_job``); it may send ``("ready", ...)``
over ``conn`` before it returns its result. Subscribers are real ``Subscribe``
streams (``grpc.aio``, one channel and TCP connection each, like separate
consumers), opened with ``initial_credits=0`` (HTTP/2 flow control only):

* :func:`latency_subscriber`: one stream ``from_end``; for each event written
  by :func:`paced_appender` it takes ``receive time - send time``, the send
  time being the ``CLOCK_MONOTONIC`` instant (system-wide on Linux) the
  appender embedded in the event's first 8 bytes just before its Append call.
  The subscriber says which worker process serves its stream
  (``GetInfo.worker_pid`` on the stream's channel), and the appender can be
  placed on that worker or on another (:func:`connect_to_worker`);
* :func:`fanout_subscribers`: many streams ``from_end``, each reading until it
  has N events, checking that positions are gapless and in order;
  :func:`batch_writer` writes those N events;
* :func:`resume`: a named consumer acks a position P, then new streams on the
  same (warm) channel are timed until the event at P + 1 arrives.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
from workloads import (
    APPEND_METHOD,
    CHANNEL_OPTIONS,
    CONTENT_TYPE,
    EVENT_BYTES,
    EVENT_TYPE,
    RPC_TIMEOUT_S,
    Requests,
    Spec,
    sleep_until,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

STAMP = struct.Struct(">QB")  # send instant (monotonic ns), kind
WARMUP, MEASURED, END = 0, 1, 2


def _options(**kwargs: Any) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(options=pb.SubscribeOptions(**kwargs))


async def _open(stub: Any, options: pb.SubscribeRequest) -> tuple[Any, int]:
    """Open a Subscribe stream; return it and its confirmation's start_after_position."""
    call = stub.Subscribe(timeout=RPC_TIMEOUT_S * 10)
    await call.write(options)
    first = await call.read()
    if first is grpc.aio.EOF or first.WhichOneof("kind") != "confirmation":
        raise RuntimeError(f"expected a confirmation, got {first!r}")
    return call, int(first.confirmation.start_after_position)


# -- 1. delivery latency: one paced appender, one subscriber --------------------------


@dataclass
class Delivery:
    """What the latency subscriber saw."""

    start_after: int = 0
    worker_pid: int = 0  # the daemon process serving the stream
    latencies_ns: list[int] = field(default_factory=list)
    in_order: bool = True
    ended: bool = False  # saw the appender's end marker
    error: str = ""


def latency_subscriber(conn: Connection, address: str, cap_s: float) -> Delivery:
    return asyncio.run(_latency_subscriber(conn, address, cap_s))


async def _latency_subscriber(conn: Connection, address: str, cap_s: float) -> Delivery:
    res = Delivery()
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        stub = pb_grpc.EventStoreServiceStub(channel)
        # The stream's channel has one connection, so this is the stream's worker.
        info = await stub.GetInfo(pb.GetInfoRequest(), timeout=RPC_TIMEOUT_S)
        res.worker_pid = int(info.worker_pid)
        call, res.start_after = await _open(stub, _options(from_end={}))
        conn.send(("ready", (res.start_after, res.worker_pid)))
        try:
            await asyncio.wait_for(_read_stamps(call, res), cap_s)
        except TimeoutError:
            res.error = f"no end marker within {cap_s:g} s"
        except grpc.RpcError as exc:
            res.error = f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            call.cancel()
    return res


async def _read_stamps(call: Any, res: Delivery) -> None:
    clock, unpack, lat = time.monotonic_ns, STAMP.unpack_from, res.latencies_ns
    expected = res.start_after + 1
    while True:
        msg = await call.read()
        now = clock()
        if msg is grpc.aio.EOF:
            res.error = "the stream ended"
            return
        if msg.WhichOneof("kind") != "events":
            continue
        for event in msg.events.events:
            res.in_order &= event.position == expected
            expected = event.position + 1
            sent, kind = unpack(event.data)
            if kind == MEASURED:
                lat.append(now - sent)
            elif kind == END:
                res.ended = True
                return


@dataclass(frozen=True)
class Placement:
    """Which worker process the paced appender's connection must reach."""

    worker_pid: int  # the subscriber's worker
    same: bool  # on it (True) or on any other (False)

    def fits(self, pid: int) -> bool:
        return (pid == self.worker_pid) == self.same


def connect_to_worker(
    address: str, placement: Placement, attempts: int
) -> tuple[grpc.Channel, int, int]:
    """A channel whose connection reached a worker that ``placement`` fits:
    the channel, that worker's pid, and the connections it took. The kernel
    gives each new connection to a worker (``SO_REUSEPORT``), so it connects
    until one fits, at most ``attempts`` times; each attempt's channel has an
    option of its own, so gRPC opens a new connection for it instead of
    sharing one it already has."""
    for attempt in range(1, attempts + 1):
        options = [*CHANNEL_OPTIONS, ("lighthouse.perf.attempt", attempt)]
        channel = grpc.insecure_channel(address, options=options)
        try:
            stub = pb_grpc.EventStoreServiceStub(channel)
            pid = int(stub.GetInfo(pb.GetInfoRequest(), timeout=RPC_TIMEOUT_S).worker_pid)
        except BaseException:
            channel.close()
            raise
        if placement.fits(pid):
            return channel, pid, attempt
        channel.close()
    where = "on" if placement.same else "off"
    raise RuntimeError(f"no connection landed {where} worker {placement.worker_pid}"
                       f" in {attempts} attempts")  # fmt: skip


@dataclass
class Paced:
    """What the paced appender did."""

    sent: int = 0  # measured appends
    latencies_ns: list[int] = field(default_factory=list)  # of the measured appends
    late: int = 0  # sends more than one interval behind schedule
    start_ns: int = 0
    end_ns: int = 0
    errors: int = 0
    first_error: str = ""
    worker_pid: int = 0  # with a placement: the worker its appends went to
    connections: int = 0  # with a placement: the connections opened to get there


CONNECT_ATTEMPTS = 40  # a placement's connections at most (each lands on 1 of N workers)


def paced_appender(
    conn: Connection,
    address: str,
    rate: float,
    warmup: int,
    count: int,
    cap_s: float,
    placement: Placement | None = None,
) -> Paced:
    """Single-event appends at ``rate``/s: ``warmup`` marked WARMUP, then
    ``count``, then END; with a ``placement``, over a connection to the worker
    it names (if none is found: an error, and only the END marker, so that the
    subscriber stops)."""
    res = Paced()
    channel = None
    if placement is not None:
        try:
            channel, res.worker_pid, res.connections = connect_to_worker(
                address, placement, CONNECT_ATTEMPTS
            )
        except RuntimeError as exc:
            res.errors, res.first_error = 1, str(exc)
            warmup = count = 0
    if channel is None:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        append = pb_grpc.EventStoreServiceStub(channel).Append
        event = pb.ProposedEvent(event_type=EVENT_TYPE, content_type=CONTENT_TYPE)
        request = pb.AppendRequest(stream=f"bench-delivery-{uuid.uuid4().hex[:8]}", events=[event])
        target = request.events[0]
        pad = os.urandom(EVENT_BYTES - STAMP.size)
        interval = int(1e9 / rate)
        clock = time.monotonic_ns
        res.start_ns = start = clock() + 10_000_000
        deadline = start + int(cap_s * 1e9)
        total = warmup + count
        for i in range(total + 1):
            due = start + i * interval
            sleep_until(due)
            kind = WARMUP if i < warmup else MEASURED if i < total else END
            target.event_id = str(uuid.uuid4())
            t0 = clock()
            if t0 > deadline and kind != END:
                continue  # out of time: skip to the end marker
            res.late += t0 - due > interval
            target.data = STAMP.pack(t0, kind) + pad
            try:
                append(request, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                res.errors += 1
                res.first_error = res.first_error or f"{type(exc).__name__}: {exc}"[:2000]
                continue
            if kind == MEASURED:
                res.latencies_ns.append(clock() - t0)
                res.sent += 1
        res.end_ns = clock()
    finally:
        channel.close()
    return res


# -- 2. fan-out: many subscribers, one batch writer --------------------------------------


@dataclass
class Follower:
    """One fan-out stream."""

    start_after: int = 0
    events: int = 0
    last_position: int = 0
    in_order: bool = True
    fell_behind: int = 0  # fell_behind messages received
    messages: int = 0  # event batches received
    last_ns: int = 0  # when the last expected event arrived
    error: str = ""


def fanout_subscribers(
    conn: Connection, address: str, streams: int, n_events: int, cap_s: float
) -> list[Follower]:
    return asyncio.run(_fanout(conn, address, streams, n_events, cap_s))


async def _fanout(
    conn: Connection, address: str, streams: int, n_events: int, cap_s: float
) -> list[Follower]:
    ready: asyncio.Queue[int] = asyncio.Queue()
    go = asyncio.get_running_loop().create_future()
    results = [Follower() for _ in range(streams)]
    tasks = [
        asyncio.create_task(_follow(address, n_events, cap_s, res, ready, go)) for res in results
    ]
    try:
        for _ in range(streams):
            await asyncio.wait_for(ready.get(), RPC_TIMEOUT_S * 2)
        conn.send(("ready", [r.start_after for r in results]))
        go.set_result(None)
        await asyncio.wait_for(asyncio.gather(*tasks), cap_s + RPC_TIMEOUT_S)
    finally:
        for t in tasks:
            t.cancel()
    return results


async def _follow(
    address: str,
    n_events: int,
    cap_s: float,
    res: Follower,
    ready: asyncio.Queue[int],
    go: asyncio.Future[None],
) -> None:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
            stub = pb_grpc.EventStoreServiceStub(channel)
            call, res.start_after = await _open(stub, _options(from_end={}))
        except (grpc.RpcError, RuntimeError, TimeoutError) as exc:
            res.error = f"subscribing failed: {type(exc).__name__}: {exc}"[:2000]
            return
        finally:
            await ready.put(0)
        await go
        try:
            await asyncio.wait_for(_read_positions(call, res, n_events), cap_s)
        except TimeoutError:
            res.error = f"{res.events} of {n_events} events within {cap_s:g} s"
        except grpc.RpcError as exc:
            res.error = f"{type(exc).__name__}: {exc}"[:2000]
        finally:
            call.cancel()


async def _read_positions(call: Any, res: Follower, n_events: int) -> None:
    expected = res.start_after + 1
    last = res.start_after + n_events
    in_order = True
    while expected <= last:
        msg = await call.read()
        if msg is grpc.aio.EOF:
            res.error = "the stream ended"
            break
        kind = msg.WhichOneof("kind")
        if kind == "fell_behind_position":
            res.fell_behind += 1
        if kind != "events":
            continue
        res.messages += 1
        for event in msg.events.events:
            in_order &= event.position == expected
            expected = event.position + 1
        res.events += len(msg.events.events)
    res.last_ns = time.monotonic_ns()
    res.last_position = expected - 1
    res.in_order = in_order


@dataclass
class Written:
    events: int = 0
    first_ns: int = 0  # just before the first Append was sent
    end_ns: int = 0  # when the last Append was acknowledged
    errors: int = 0
    first_error: str = ""


def batch_writer(
    conn: Connection, address: str, n_events: int, batch: int, cap_s: float
) -> Written:
    """Sequential appends of ``batch`` events each until ``n_events`` are written."""
    spec = Spec("append", address, cap_s, n_events // batch, events_per_call=batch)
    requests = Requests(spec, 0)
    requests.stream = f"bench-fanout-{uuid.uuid4().hex[:8]}"
    calls = [requests.next() for _ in range(spec.max_calls)]
    res = Written()
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        append = channel.unary_unary(APPEND_METHOD, _registered_method=True)  # pre-serialized
        res.first_ns = time.monotonic_ns()
        deadline = res.first_ns + int(cap_s * 1e9)
        for request in calls:
            if time.monotonic_ns() > deadline:
                break
            try:
                append(request, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                res.errors += 1
                res.first_error = res.first_error or f"{type(exc).__name__}: {exc}"[:2000]
                break  # later batches would leave a gap the subscribers wait for
            res.events += batch
        res.end_ns = time.monotonic_ns()
    finally:
        channel.close()
    return res


# -- 3. resume from a named checkpoint -------------------------------------------------


@dataclass
class Resumed:
    ack_stored_ns: int = 0  # from sending the ack to its checkpoint_stored_position
    latencies_ns: list[int] = field(default_factory=list)
    first_events: int = 0  # events in the first batch of the last resume
    error: str = ""


def resume(
    conn: Connection, address: str, consumer: str, position: int, repeats: int, cap_s: float
) -> Resumed:
    return asyncio.run(_resume(address, consumer, position, repeats, cap_s))


async def _resume(
    address: str, consumer: str, position: int, repeats: int, cap_s: float
) -> Resumed:
    res = Resumed()
    deadline = time.monotonic() + cap_s
    # One channel for everything: its TCP connection is open and warm before the
    # first timed resume, so each resume times the stream, not a connect.
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), RPC_TIMEOUT_S)
        stub = pb_grpc.EventStoreServiceStub(channel)
        # Store the checkpoint: start the consumer's first stream after the position (a
        # position it was told, so it may ack it), 1 credit so the server sends one event.
        first_stream = _options(consumer=consumer, after_position=position, initial_credits=1)
        call, _ = await _open(stub, first_stream)
        try:
            t0 = time.monotonic_ns()
            await call.write(pb.SubscribeRequest(ack_position=position))
            while time.monotonic() < deadline:
                msg = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
                if msg is grpc.aio.EOF:
                    raise RuntimeError("the stream ended before the ack was stored")
                stored = msg.WhichOneof("kind") == "checkpoint_stored_position"
                if stored and msg.checkpoint_stored_position >= position:
                    break
            else:
                raise TimeoutError(f"ack of {position} not stored within {cap_s:g} s")
            res.ack_stored_ns = time.monotonic_ns() - t0
        finally:
            call.cancel()
        options = _options(consumer=consumer)
        for _ in range(repeats):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)  # let the server finish the previous stream
            t0 = time.monotonic_ns()
            after, events = await _first_events(stub, options, deadline)
            t1 = time.monotonic_ns()
            first = events[0].position if events else -1
            if after != position or first != position + 1:
                res.error = f"resumed after {after}, first event {first}; acked {position}"
                break
            res.latencies_ns.append(t1 - t0)
            res.first_events = len(events)
    return res


async def _first_events(
    stub: Any, options: pb.SubscribeRequest, deadline: float
) -> tuple[int, list[Any]]:
    """Open a stream: its start_after_position and its first batch of events; then hang up."""
    call, after = await _open(stub, options)
    try:
        while time.monotonic() < deadline:
            msg = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
            if msg is grpc.aio.EOF:
                return after, []
            if msg.WhichOneof("kind") == "events":
                return after, list(msg.events.events)
        return after, []
    finally:
        call.cancel()
