"""Degraded mode (_degraded.py) against scripted in-process servers
(scripted.py, pytest-grpc): a read already under way is not answered stale.
The tests with a real daemon stopped and restarted are in
test_client_resilience.py."""

from __future__ import annotations

import pytest
from scripted import MemoryLog, ScriptedStore, cut_after, unavailable

from lighthouse_client import (
    ReadCache,
    RetryPolicy,
    StoreClient,
    Unavailable,
)
from lighthouse_proto.v1 import store_pb2 as pb

grpc_max_workers = 4  # pytest-grpc's server threads (its default is one)

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01)


def filled_log() -> MemoryLog:
    log = MemoryLog(page_size=2)
    for n in range(5):
        log.append(pb.AppendRequest(stream="s", events=[pb.ProposedEvent(event_id=f"e-{n}")]))
    return log


def test_a_read_already_under_way_is_not_answered_stale(
    store: ScriptedStore, grpc_addr: str
) -> None:
    log = filled_log()
    store.on("Read", log.read)
    cache = ReadCache()
    with StoreClient(grpc_addr, timeout=0.5, retry=FAST, cache=cache) as c:
        assert not c.read_stream("s").stale  # the cache holds the whole stream
        store.on("Read", cut_after(1, log.read), unavailable())
        with pytest.raises(Unavailable):  # events were arriving: reachable, only slow
            c.read_stream("s")
        # The same read, with nothing arriving, is answered from the cache.
        store.on("Read", unavailable())
        assert c.read_stream("s").stale
    cache.close()

