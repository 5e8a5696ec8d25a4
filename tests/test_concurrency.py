"""Concurrent appenders: optimistic concurrency, gapless positions, ordering.

Every test runs against one process and against two worker processes (the
``workers`` fixture), whose appends meet only in LMDB: the stubs are dealt
round the workers (``spread_stubs``)."""

from __future__ import annotations

import itertools
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from support import (
    DaemonFactory,
    ThreadErrors,
    append,
    assert_matches,
    error_info,
    head,
    new_event,
    read_all,
    read_pages,
    read_stream,
    run_threads,
    spread_stubs,
    ts_ns,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

WRITERS = 16
ROUNDS = 30


@pytest.fixture
def daemon(daemon_factory: DaemonFactory, workers: int) -> DaemonProcess:
    return daemon_factory(workers=workers)


@dataclass
class Outcome:
    round: int
    writer: int
    event: pb.ProposedEvent
    ok: bool
    last_revision: int = -1
    last_position: int = -1
    code: grpc.StatusCode | None = None
    actual: str = ""
    expected: str = ""


def test_exactly_one_writer_wins_each_round(daemon: DaemonProcess) -> None:
    stubs = spread_stubs(daemon, 4)  # a few connections, shared by threads
    barrier = threading.Barrier(WRITERS, timeout=60)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    errors = ThreadErrors()

    def writer(w: int) -> None:
        stub = stubs[w % len(stubs)]
        try:
            for r in range(ROUNDS):
                ev = new_event("Raced", f"round {r} writer {w}".encode())
                expected: str | int = "no_stream" if r == 0 else r - 1
                barrier.wait()
                try:
                    resp = append(stub, "race", ev, expected)
                    out = Outcome(r, w, ev, True, resp.last_revision, resp.last_position)
                except grpc.RpcError as err:
                    md = (
                        dict(error_info(err).metadata)
                        if err.code() == grpc.StatusCode.FAILED_PRECONDITION
                        else {}
                    )
                    out = Outcome(
                        r, w, ev, False, code=err.code(),
                        actual=md.get("actual", ""), expected=md.get("expected", ""),
                    )  # fmt: skip
                with lock:
                    outcomes.append(out)
        except BaseException as exc:
            errors.add(exc)
            barrier.abort()

    run_threads(writer, WRITERS, 300)
    errors.raise_first()
    assert len(outcomes) == WRITERS * ROUNDS

    winners: list[Outcome] = []
    for r in range(ROUNDS):
        this = [o for o in outcomes if o.round == r]
        won = [o for o in this if o.ok]
        lost = [o for o in this if not o.ok]
        assert len(won) == 1, f"round {r}: {len(won)} winners"
        assert won[0].last_revision == r
        for o in lost:
            assert o.code == grpc.StatusCode.FAILED_PRECONDITION, (r, o.code)
            assert o.expected == ("no_stream" if r == 0 else str(r - 1)), o
            assert o.actual == str(r), o
        winners.append(won[0])

    got = read_stream(stub := stubs[0], "race")
    assert [e.revision for e in got] == list(range(ROUNDS))
    assert [e.position for e in got] == list(range(1, ROUNDS + 1))
    for rec, o in zip(got, winners, strict=True):
        assert_matches(rec, o.event)
        assert rec.position == o.last_position
    assert head(stub) == ROUNDS


@pytest.mark.slow
def test_gapless_positions_across_10000_events(daemon: DaemonProcess) -> None:
    threads_n, batches, batch_size = 4, 25, 100
    streams_per_thread = 3
    stubs = spread_stubs(daemon, threads_n)
    # (stream, sent events, response) per append
    results: list[tuple[str, list[pb.ProposedEvent], pb.AppendResponse]] = []
    lock = threading.Lock()
    errors = ThreadErrors()

    def writer(t: int) -> None:
        try:
            for b in range(batches):
                stream = f"s{t}-{b % streams_per_thread}"
                batch = [
                    new_event(f"T{i % 3}", f"{t}/{b}/{i}".encode(), metadata={"t": str(t)})
                    for i in range(batch_size)
                ]
                resp = append(stubs[t], stream, batch)
                with lock:
                    results.append((stream, batch, resp))
        except BaseException as exc:
            errors.add(exc)

    run_threads(writer, threads_n, 300)
    errors.raise_first()

    total = threads_n * batches * batch_size
    assert head(stubs[0]) == total
    pages = read_pages(stubs[0], pb.ReadRequest(stream="$all"))
    got = [e for p in pages for e in p.events]
    assert len(got) == total
    assert len(pages) < total // 2, "every event in its own page"
    assert [e.position for e in got] == list(range(1, total + 1))
    stamps = [ts_ns(e.recorded_at) for e in got]
    assert all(a <= b for a, b in itertools.pairwise(stamps)), "recorded_at decreased"
    assert stamps[0] > 0
    assert sum(1 for e in got if e.checksum == 0) <= 1

    # Each append landed at consecutive positions, matching its response.
    by_pos = {e.position: e for e in got}
    for stream, batch, resp in results:
        assert resp.last_position - resp.first_position + 1 == len(batch)
        for k, ev in enumerate(batch):
            rec = by_pos[resp.first_position + k]
            assert rec.stream == stream
            assert_matches(rec, ev)
            assert rec.revision == resp.last_revision - (len(batch) - 1 - k)

    # Per-stream revisions are gapless and ordered by position.
    per_stream: dict[str, list[int]] = defaultdict(list)
    for e in got:
        per_stream[e.stream].append(e.revision)
    assert len(per_stream) == threads_n * streams_per_thread
    for name, revs in per_stream.items():
        assert revs == list(range(len(revs))), name
        assert [e.revision for e in read_stream(stubs[0], name)] == revs

    backwards = read_all(stubs[0], direction=pb.DIRECTION_BACKWARDS)
    assert [e.position for e in backwards] == list(range(total, 0, -1))


def test_concurrent_idempotent_retries(daemon: DaemonProcess) -> None:
    """The same append sent by 8 threads at once is written exactly once."""
    stubs = spread_stubs(daemon, 4)
    barrier = threading.Barrier(8, timeout=60)
    batch = [new_event("Once", str(i).encode()) for i in range(5)]
    results: list[pb.AppendResponse] = []
    lock = threading.Lock()
    errors = ThreadErrors()

    def sender(i: int) -> None:
        try:
            barrier.wait()
            resp = append(stubs[i % 4], "once", batch, "no_stream")
            with lock:
                results.append(resp)
        except BaseException as exc:
            errors.add(exc)

    run_threads(sender, 8, 120)
    errors.raise_first()
    assert len(results) == 8
    assert all(r == results[0] for r in results)
    assert (results[0].first_position, results[0].last_position) == (1, 5)
    assert head(stubs[0]) == 5
    assert len(read_stream(stubs[0], "once")) == 5


def test_queue_limit_rejects_or_accepts_cleanly(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    """With a tiny --max-queue, each append either lands or gets RESOURCE_EXHAUSTED
    (recoverable); nothing half-written, positions gapless. Commits are slowed
    (the commit-pause fault), so that with 8 writers the queue surely fills."""
    env = {**os.environ, COMMIT_PAUSE_MS: "20"}
    d = daemon_factory(extra_args=["--max-queue", "1"], env=env, workers=workers)
    stubs = spread_stubs(d, 8)
    acked: dict[str, tuple[str, int]] = {}
    rejected: list[str] = []
    lock = threading.Lock()
    errors = ThreadErrors()

    def writer(t: int) -> None:
        try:
            for _ in range(40):
                batch = [new_event("Q", b"x" * 512) for _ in range(20)]
                try:
                    resp = append(stubs[t], f"q{t}", batch)
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                    assert error_info(err).metadata["failure_class"] == "recoverable"
                    with lock:
                        rejected.extend(e.event_id for e in batch)
                    continue
                with lock:
                    for k, e in enumerate(batch):
                        acked[e.event_id] = (f"q{t}", resp.first_position + k)
        except BaseException as exc:
            errors.add(exc)

    run_threads(writer, 8, 240)
    errors.raise_first()
    assert acked, "no append got through at all"
    assert rejected, "the queue never filled: nothing was refused"
    stub: Any = stubs[0]
    got = read_all(stub)
    assert [e.position for e in got] == list(range(1, len(got) + 1))
    assert {e.event_id: (e.stream, e.position) for e in got} == acked
    assert not set(rejected) & {e.event_id for e in got}
