"""Client retries, resumable subscriptions, degraded mode and the outbox, with
real daemons stopped, killed and restarted."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lmdb
import pytest
from support import DaemonFactory

from lighthouse_client import (
    NO_STREAM,
    AsyncStoreClient,
    BreakerState,
    CircuitBreaker,
    DeadLetter,
    Filter,
    NewEvent,
    Outbox,
    ReadCache,
    RetryPolicy,
    StoreClient,
    Unavailable,
)
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess


def restart_later(daemon: DaemonProcess, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        daemon.start()

    t = threading.Thread(target=run)
    t.start()
    return t


# -- retries ------------------------------------------------------------------


def test_a_call_rides_out_a_5s_outage_inside_its_30s_deadline(daemon: DaemonProcess) -> None:
    # Default breaker (10 failed calls open it): the call's dozens of failed
    # attempts during the outage are one call, which succeeds in the end.
    with StoreClient(daemon.address, timeout=30.0) as client:
        client.append("s", NewEvent("A"))
        daemon.stop()
        t = restart_later(daemon, 5.0)
        event = NewEvent("B")
        started = time.monotonic()
        try:
            result = client.append("s", event, 0)  # starts while the daemon is down
        finally:
            t.join(30)
        assert time.monotonic() - started >= 4.5  # it did wait the outage out
        assert result.last_revision == 1 and not result.queued
        stored = client.read_stream("s")
        assert [e.event_type for e in stored] == ["A", "B"]
        assert [e.event_id for e in stored].count(event.event_id) == 1
        assert client.aio.breaker.state is BreakerState.CLOSED


def test_an_append_whose_reply_was_lost_is_written_once(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    env = dict(os.environ, LIGHTHOUSE_FAULT_EXIT_AFTER_COMMITS="2")
    daemon = daemon_factory(env=env)  # dies after the 2nd commit, before replying
    with StoreClient(daemon.address, timeout=60.0) as client:
        client.append("s", NewEvent("first"))
        watcher_done = threading.Event()
        event = NewEvent("lost-reply")
        durable_before_restart: list[bool] = []

        def restart_when_dead() -> None:
            assert daemon.proc is not None
            daemon.proc.wait(60)
            # The daemon died after the commit: the event is on disk already.
            env = lmdb.open(str(daemon.data_dir / "lmdb"), max_dbs=8, readonly=True, lock=False)
            with env.begin() as txn:
                key = uuid.UUID(event.event_id).bytes
                durable_before_restart.append(
                    txn.get(key, db=env.open_db(b"event_ids", txn=txn)) is not None
                )
            env.close()
            daemon.env = dict(os.environ)  # back without the fault
            daemon.start()
            watcher_done.set()

        t = threading.Thread(target=restart_when_dead)
        t.start()
        result = client.append("s", event, 0)
        t.join(60)
        assert watcher_done.is_set(), "the fault hook did not fire"
        assert durable_before_restart == [True], "the reply was lost before the commit, not after"
        assert result.last_revision == 1
        events = client.read_stream("s")
        assert [e.event_id for e in events].count(event.event_id) == 1
        assert len(events) == 2


# -- resumable subscriptions -------------------------------------------------------


@pytest.mark.slow
def test_subscription_survives_kill9_and_restart(daemon: DaemonProcess) -> None:
    total = 10_000
    with (
        StoreClient(daemon.address, timeout=60.0) as writer_client,
        StoreClient(daemon.address) as reader_client,
    ):
        sub = reader_client.subscribe(start="start", window=500)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(total // 100):
                    writer_client.append(f"s-{i % 5}", [NewEvent("E") for _ in range(100)])
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=write)
        t.start()
        seen: list[int] = []
        killed = False
        deadline = time.monotonic() + 180
        for event in sub:
            seen.append(event.position)
            if len(seen) == 3_000 and not killed:
                daemon.kill9()
                killed = True
                daemon.start()
            if len(seen) >= total or time.monotonic() > deadline:
                break
        t.join(120)
        sub.close()
        assert not errors, errors
        assert killed and sub.reconnects >= 1
        assert seen == list(range(1, total + 1))


def test_named_consumer_ack_is_flushed_on_close_and_resumed(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as client:
        client.append("s", [NewEvent("E") for _ in range(50)])
        sub = client.subscribe(consumer="worker", start="start")
        for event in sub:
            if event.position % 10 == 0:
                sub.ack(event)
            if event.position == 30:
                break
        sub.close()  # waits until the daemon confirms ack 30 is stored
    daemon.kill9()
    daemon.start()
    with StoreClient(daemon.address) as client:
        sub = client.subscribe(consumer="worker", start="start")
        assert next(sub).position == 31
        sub.close()


def _wait_for_stored_ack(daemon: DaemonProcess, consumer: str, position: int) -> None:
    """Until a new subscription of ``consumer`` would start after ``position``."""
    stub = daemon.stub()
    deadline = time.monotonic() + 30
    while True:
        options = pb.SubscribeOptions(consumer=consumer, from_start={})
        call = stub.Subscribe(iter([pb.SubscribeRequest(options=options)]), timeout=10)
        start = next(call).confirmation.start_after_position
        call.cancel()
        if start == position:
            return
        assert time.monotonic() < deadline, f"ack {position} of {consumer} never stored"
        time.sleep(0.02)


def test_a_consumer_resumed_from_its_stored_ack_repeats_nothing(daemon: DaemonProcess) -> None:
    # The daemon resumes a named consumer after its stored ack (10 at most),
    # behind what this subscription already delivered (30): the client drops
    # the repeats, so the caller sees every event once.
    with StoreClient(daemon.address, timeout=30.0) as client:
        client.append("s", [NewEvent("E") for _ in range(30)])
        sub = client.subscribe(consumer="worker", start="start")
        seen: list[int] = []
        for event in sub:
            seen.append(event.position)
            if event.position == 10:
                sub.ack(event)
            if event.position == 30:
                _wait_for_stored_ack(daemon, "worker", 10)
                daemon.kill9()
                daemon.start()
                client.append("s", [NewEvent("E") for _ in range(20)])  # only after a reconnect
            if event.position == 50:
                break
        reconnects = sub.reconnects
        sub.close()
    assert reconnects >= 1
    assert seen == list(range(1, 51))


def test_an_unstored_ack_is_resent_once_the_new_stream_has_passed_it(
    daemon_factory: DaemonFactory,
) -> None:
    # The daemon stores acks with the next commit or after --ack-delay-ms; at
    # 2 s, ack 31 is certainly not stored when the daemon is killed. The
    # restarted daemon resumes the consumer after its stored ack (10) and
    # refuses an ack above what the new stream has sent: the client must hold
    # ack 31 back until the repeats of 11..31 have passed. A window of 4
    # credits keeps the new stream from sending past 11..14 before it reads
    # an ack sent straight after the options.
    daemon = daemon_factory(extra_args=["--ack-delay-ms", "2000"])
    with StoreClient(daemon.address, timeout=30.0) as client:
        client.append("s", [NewEvent("E") for _ in range(30)])
        sub = client.subscribe(consumer="c", start="start", window=4)
        seen: list[int] = []
        for event in sub:
            seen.append(event.position)
            if event.position == 10:
                sub.ack(event)
                client.append("other", NewEvent("E"))  # position 31; its commit stores ack 10
                _wait_for_stored_ack(daemon, "c", 10)
            if event.position == 31:
                sub.ack(event)
                daemon.kill9()
                daemon.start()
                client.append("s", NewEvent("E"))  # 32, seen only after a reconnect
            if event.position == 32:
                break
        reconnects = sub.reconnects
        sub.close(flush_timeout=30.0)  # the re-sent ack 31 is stored and confirmed
    assert reconnects >= 1 and seen == list(range(1, 33))
    with StoreClient(daemon.address) as client:
        again = client.subscribe(consumer="c", start="start")
        assert next(again).position == 32
        again.close()


def test_a_filtered_subscription_s_checkpoints_skip_no_event(daemon: DaemonProcess) -> None:
    # While catching up past events the filter skips, the daemon sends
    # checkpoints (every 1,000 positions by default) that the client resumes
    # after; the matching event right after the last checkpoint still arrives.
    with StoreClient(daemon.address, timeout=30.0) as client:
        for _ in range(2):
            client.append("noise", [NewEvent("Noise") for _ in range(1000)])
        client.append("signal", [NewEvent("Wanted") for _ in range(3)])
        sub = client.subscribe(start="start", filter=Filter(event_types=("Wanted",)))
        try:
            # Pages of 1,000 records visited: checkpoints at 1,000 and 2,000.
            assert [next(sub).position, next(sub).position] == [2001, 2002]
        finally:
            sub.close()


def test_async_subscription_resumes_across_a_restart(daemon: DaemonProcess) -> None:
    async def main() -> list[int]:
        async with AsyncStoreClient(daemon.address, timeout=30.0) as client:
            await client.append("s", [NewEvent("E") for _ in range(200)])
            sub = client.subscribe(start="start", window=50)
            seen: list[int] = []
            async for event in sub:
                seen.append(event.position)
                if event.position == 120:
                    await asyncio.to_thread(daemon.stop)
                    await asyncio.to_thread(daemon.start)
                    await client.append("s", [NewEvent("E") for _ in range(100)])
                if len(seen) == 300:
                    break
            await sub.close()
            return seen

    assert asyncio.run(main()) == list(range(1, 301))


# -- degraded mode --------------------------------------------------------------


def test_degraded_reads_come_from_the_cache(daemon: DaemonProcess, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = ReadCache(path=cache_dir)
    with StoreClient(daemon.address, timeout=1.0, cache=cache) as client:
        client.append("orders", [NewEvent("E", bytes([i])) for i in range(5)])
        fresh = client.read_stream("orders")
        one = client.get_event(fresh[2].event_id)
        client.read_all()
        client.info()
        daemon.stop()
        stale = client.read_stream("orders")
        assert stale.stale and stale.events == fresh.events
        assert stale.fetched_at is not None and stale.fetched_at <= time.time()
        assert stale.head_position == 5
        cached = client.get_event(one.event.event_id)
        assert cached.stale and cached.event == one.event
        tail = client.read_all(from_position=4)
        assert tail.stale and [e.position for e in tail] == [4, 5]
        with pytest.raises(Unavailable):
            client.read_stream("never-read")
        with pytest.raises(Unavailable):
            client.get_event("0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d")
    cache.close()
    # A new client process (new cache object) on the same directory, daemon still down.
    cache = ReadCache(path=cache_dir)
    try:
        with StoreClient(daemon.address, timeout=1.0, cache=cache) as client:
            again = client.read_stream("orders")
            assert again.stale and [e.data for e in again] == [bytes([i]) for i in range(5)]
    finally:
        cache.close()


def at_or_before(ns: int) -> datetime:
    """Unix nanoseconds as a UTC datetime, rounded down to its microseconds."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def test_a_stale_time_window_read_counts_only_events_in_the_window(
    daemon: DaemonProcess,
) -> None:
    cache = ReadCache()
    with StoreClient(daemon.address, timeout=1.0, cache=cache) as client:
        client.append("early", [NewEvent("E", bytes([i])) for i in range(4)])
        time.sleep(0.02)  # later appends get a later recorded_at; no timing is asserted
        for i in range(3):
            client.append("mid", [NewEvent("M", bytes([i, j])) for j in range(2)])
        time.sleep(0.02)
        client.append("late", [NewEvent("L", bytes([i])) for i in range(2)])
        everything = client.read_all()  # fills the cache
        assert [e.stream for e in everything] == ["early"] * 4 + ["mid"] * 6 + ["late"] * 2
        start = at_or_before(everything[4].recorded_at_ns)  # the first "mid"
        end = at_or_before(everything[10].recorded_at_ns)  # the first "late"
        queries: list[dict[str, Any]] = [
            {"from_time": start, "max_count": 3},
            {"from_time": start, "to_time": end},
            {"from_time": start, "to_time": end, "max_count": 4, "backwards": True},
            {"to_time": end, "max_count": 2, "backwards": True},
            {"from_time": start, "max_count": 1, "filter": Filter(streams=("late",))},
        ]
        live = [client.read_all(**q) for q in queries]
        assert [e.position for e in live[0]] == [5, 6, 7]  # the first 3 of the window
        assert [[e.position for e in r] for r in live[1:]] == [
            [5, 6, 7, 8, 9, 10],
            [10, 9, 8, 7],
            [10, 9],
            [11],
        ]
        daemon.stop()
        for query, fresh in zip(queries, live, strict=True):
            stale = client.read_all(**query)
            assert stale.stale, query
            assert stale.events == fresh.events, query
    cache.close()


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state  # a call, so that mypy does not narrow the property


def test_circuit_breaker_opens_and_half_opens(daemon: DaemonProcess) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0)
    policy = RetryPolicy(max_attempts=1)
    with StoreClient(daemon.address, timeout=1.0, breaker=breaker, retry=policy) as client:
        client.info()
        daemon.stop()
        for _ in range(3):
            with pytest.raises(Unavailable):
                client.info()
        assert state_of(breaker) is BreakerState.OPEN
        with pytest.raises(Unavailable) as fast:
            client.info()
        assert "circuit" in fast.value.message
        daemon.start()
        time.sleep(1.2)
        assert state_of(breaker) is BreakerState.HALF_OPEN
        assert client.info().head_position == 0  # the probe succeeds and closes it
        assert state_of(breaker) is BreakerState.CLOSED


@pytest.mark.slow
def test_outbox_queues_while_down_and_flushes_in_order(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    dead: list[DeadLetter] = []
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=0.5)
    with StoreClient(
        daemon.address,
        timeout=1.0,
        outbox=outbox,
        breaker=breaker,
        on_conflict=dead.append,
        outbox_flush_interval=3600,
    ) as client:
        client.append("taken", NewEvent("A"))
        daemon.stop()
        sent = [NewEvent("E", str(i).encode()) for i in range(1000)]
        results = [client.append(f"q-{i % 4}", e) for i, e in enumerate(sent)]
        assert all(r.queued for r in results)
        conflict = client.append("taken", NewEvent("B"), NO_STREAM)  # will conflict
        assert conflict.queued and len(outbox) == 1001
        daemon.start()
        time.sleep(0.6)  # let the breaker half-open
        deadline = time.monotonic() + 60
        while len(outbox) and time.monotonic() < deadline:
            client.flush_outbox(timeout=10)
        assert len(outbox) == 0
        stored = [e for e in client.read_all() if e.event_type == "E"]
        assert [e.event_id for e in stored] == [e.event_id for e in sent]
        assert [d.entry.stream for d in dead] == ["taken"]
        assert "WrongExpectedRevision" in dead[0].reason
        assert [d.entry.seq for d in outbox.dead_letters()] == [dead[0].entry.seq]
        # Flushing again writes nothing twice.
        client.flush_outbox()
        assert len([e for e in client.read_all() if e.event_type == "E"]) == 1000
    outbox.close()


def test_async_degraded_mode_and_outbox(daemon: DaemonProcess, tmp_path: Path) -> None:
    cache = ReadCache()
    outbox = Outbox(tmp_path / "outbox")
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.3)

    async def main() -> None:
        async with AsyncStoreClient(
            daemon.address,
            timeout=1.0,
            cache=cache,
            outbox=outbox,
            breaker=breaker,
            outbox_flush_interval=0.1,
        ) as client:
            await client.append("s", [NewEvent("A"), NewEvent("B")])
            fresh = await client.read_stream("s")
            await asyncio.to_thread(daemon.stop)
            stale = await client.read_stream("s")
            assert stale.stale and stale.events == fresh.events
            queued = await client.append("s", NewEvent("C"), 1)
            assert queued.queued and len(outbox) == 1
            await asyncio.to_thread(daemon.start)
            for _ in range(200):  # the background flusher sends it once the breaker half-opens
                if not len(outbox):
                    break
                await asyncio.sleep(0.05)
            assert len(outbox) == 0
            again = await client.read_stream("s")
            assert not again.stale and [e.event_type for e in again] == ["A", "B", "C"]

    try:
        asyncio.run(main())
    finally:
        outbox.close()
        cache.close()


def test_subscription_with_buffered_events_survives_a_restart(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address, timeout=30.0) as client:
        client.append("s", [NewEvent("E") for _ in range(100)])
        sub = client.subscribe(start="start", window=1000)
        seen = [next(sub).position for _ in range(4)]  # the rest of the batch is buffered
        daemon.stop()
        daemon.start()
        client.append("s", [NewEvent("E") for _ in range(10)])
        for event in sub:
            seen.append(event.position)
            if len(seen) == 110:
                break
        sub.close()
        assert seen == list(range(1, 111))


def test_an_ack_made_while_disconnected_is_flushed_on_close(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address, timeout=30.0) as client:
        client.append("s", [NewEvent("E") for _ in range(20)])
        sub = client.subscribe(consumer="late-acker", start="start")
        for event in sub:
            if event.position == 10:
                break
        daemon.stop()
        sub.ack(10)  # the stream is broken now
        daemon.start()
        sub.close(flush_timeout=30.0)  # reconnects, re-sends the ack, waits for it
        again = client.subscribe(consumer="late-acker", start="start")
        assert next(again).position == 11
        again.close()


def test_an_oversized_append_is_invalid_not_retried(daemon: DaemonProcess) -> None:
    from lighthouse_client import InvalidRequest

    with StoreClient(daemon.address, timeout=30.0) as client:
        huge = [NewEvent("Big", bytes(1024 * 1024)) for _ in range(21)]  # over gRPC's limit
        with pytest.raises(InvalidRequest) as err:  # a retry loop would end in Overloaded
            client.append("s", huge)
        assert "larger than max" in err.value.message
        assert client.info().head_position == 0
