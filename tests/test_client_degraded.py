"""Degraded mode (_degraded.py) against scripted in-process servers
(scripted.py, pytest-grpc): the cache and the outbox are fallbacks taken at
once while the breaker is open, a read already under way is not answered
stale, and the outbox is flushed before a new append is sent. The tests with
a real daemon stopped and restarted are in test_client_resilience.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted import MemoryLog, ScriptedStore, cut_after, unavailable

from lighthouse_client import (
    BreakerState,
    CircuitBreaker,
    CircuitOpen,
    DeadlineExceeded,
    NewEvent,
    Outbox,
    ReadCache,
    RetryPolicy,
    StoreClient,
    Unavailable,
)
from lighthouse_proto.v1 import store_pb2 as pb

grpc_max_workers = 4  # pytest-grpc's server threads (its default is one)

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01)
# How a call that could not reach the daemon ends: its last attempt was
# refused, or ran out of the call's time.
UNREACHABLE = (Unavailable, DeadlineExceeded)


def filled_log() -> MemoryLog:
    log = MemoryLog(page_size=2)
    for n in range(5):
        log.append(pb.AppendRequest(stream="s", events=[pb.ProposedEvent(event_id=f"e-{n}")]))
    return log


def open_breaker(client: StoreClient, store: ScriptedStore) -> None:
    """One call that cannot reach the daemon (threshold 1) opens the breaker."""
    store.on("GetInfo", unavailable())
    with pytest.raises(UNREACHABLE):
        client.info(timeout=0.2)
    assert client.aio.breaker.state is BreakerState.OPEN


def test_reads_with_a_cache_take_it_at_once_while_the_breaker_is_open(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = filled_log()
    store.on("Read", log.read)
    # Open for 5 s, well inside the reads' 30 s: a call without a fallback
    # would wait for the half-open and probe.
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    cache = ReadCache()
    with StoreClient(grpc_addr, timeout=30.0, retry=FAST, breaker=breaker, cache=cache) as c:
        fresh = c.read_stream("s")
        open_breaker(c, store)
        store.on("Read", unavailable())
        store.on("GetEvent", unavailable())
        reads = len(store.requests("Read"))
        stale = c.read_stream("s")
        assert stale.stale and stale.events == fresh.events
        one = c.get_event("e-3")
        assert one.stale and one.event == fresh[3]
        with pytest.raises(Unavailable) as miss:  # not cached: no waiting either
            c.read_stream("other")
        assert not isinstance(miss.value, CircuitOpen) and "cache" in miss.value.message
        assert len(store.requests("Read")) == reads  # nothing was sent, no probe
        assert store.requests("GetEvent") == []
    cache.close()


def test_a_read_already_under_way_is_not_answered_stale(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = filled_log()
    store.on("Read", log.read)
    cache = ReadCache()
    with StoreClient(grpc_addr, timeout=0.5, retry=FAST, cache=cache) as c:
        assert not c.read_stream("s").stale  # the cache holds the whole stream
        store.on("Read", cut_after(1, log.read), unavailable())
        with pytest.raises(UNREACHABLE):  # events were arriving: reachable, only slow
            c.read_stream("s")
        # The same read, with nothing arriving, is answered from the cache.
        store.on("Read", unavailable())
        assert c.read_stream("s").stale
    cache.close()


def test_an_append_with_an_outbox_is_queued_at_once_while_the_breaker_is_open(
    store: ScriptedStore, grpc_addr: str, tmp_path: Path
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)  # as above
    outbox = Outbox(tmp_path / "outbox")
    store.on("Append", unavailable())
    try:
        with StoreClient(
            grpc_addr,
            timeout=30.0,
            retry=FAST,
            breaker=breaker,
            outbox=outbox,
            outbox_flush_interval=3600,
        ) as c:
            open_breaker(c, store)
            first = c.append("s", NewEvent("A"))  # nothing queued yet: sent, or not
            second = c.append("s", NewEvent("B"))  # queued behind it: flushed first
            assert first.queued and second.queued and len(outbox) == 2
            assert store.requests("Append") == []  # nothing was sent, no probe
    finally:
        outbox.close()


def test_the_outbox_is_flushed_before_a_new_append_is_sent(
    store: ScriptedStore, grpc_addr: str, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    log = MemoryLog()
    store.on("Append", unavailable())
    try:
        with StoreClient(
            grpc_addr, timeout=0.5, retry=FAST, outbox=outbox, outbox_flush_interval=3600
        ) as c:
            queued = [NewEvent("Q1"), NewEvent("Q2")]
            assert all(c.append("s", e).queued for e in queued)
            store.on("Append", log.append)  # the daemon is back
            late = NewEvent("Late")
            result = c.append("s", late)
            assert not result.queued and result.last_position == 3
            assert len(outbox) == 0
        assert [e.event_id for e in log.events] == [e.event_id for e in [*queued, late]]
    finally:
        outbox.close()


def test_calls_with_a_fallback_give_up_on_an_unreachable_daemon_early(
    store: ScriptedStore, grpc_addr: str, tmp_path: Path
) -> None:
    # The breaker stays closed (threshold 10): each call decides alone. With a
    # fallback, a call stops retrying after fallback_after (0.3 s) of its
    # 30 s; without one (info), it retries for its whole timeout.
    retry = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, fallback_after=0.3)
    outbox, cache = Outbox(tmp_path / "outbox"), ReadCache()
    for method in ("Append", "Read", "GetInfo"):
        store.on(method, unavailable())
    with StoreClient(grpc_addr, timeout=30.0, retry=retry, outbox=outbox, cache=cache) as c:
        assert c.append("s", NewEvent("E")).queued
        with pytest.raises(Unavailable, match="cache"):
            c.read_stream("s")
        with pytest.raises(UNREACHABLE):
            c.info(timeout=1.5)
        assert c.aio.breaker.state is BreakerState.CLOSED
    for method, least, most in (("Append", 0.3, 10.0), ("Read", 0.3, 10.0), ("GetInfo", 1.0, 1.5)):
        arrivals = [call.at for call in store.calls[method]]
        span = arrivals[-1] - arrivals[0]
        # (Slack above for the time an attempt takes to reach the server: the
        # last one may be sent just before the deadline and take longer.)
        assert least * 0.9 <= span <= most + 0.1, (method, span, len(arrivals))
    assert len(outbox) == 1
    outbox.close()
    cache.close()


def test_a_long_read_with_a_cache_that_breaks_is_resumed(
    store: ScriptedStore, grpc_addr: str
) -> None:
    # The read streams for over fallback_after (0.4 s) before its stream
    # breaks: the daemon was there all along, so the read resumes where it
    # broke, as it would without a cache, instead of failing (no stale answer
    # is possible once events have arrived).
    log = filled_log()

    def slow(request: pb.ReadRequest, context: Any) -> Iterator[Any]:
        for page in log.read(request, context):
            time.sleep(0.3)
            yield page

    store.on("Read", cut_after(2, slow), log.read)
    retry = RetryPolicy(initial_backoff=0.001, max_backoff=0.01, fallback_after=0.4)
    cache = ReadCache()
    with StoreClient(grpc_addr, timeout=30.0, retry=retry, cache=cache) as c:
        result = c.read_stream("s")
    assert not result.stale
    assert [e.event_id for e in result] == [f"e-{n}" for n in range(5)]
    assert len(store.requests("Read")) == 2
    cache.close()
