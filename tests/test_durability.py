"""Restarts, SIGTERM drain and kill -9 with no loss of acknowledged events.

Every test runs against one process and against a supervisor with two
worker processes (the ``workers`` fixture): SIGTERM and kill -9 go to the
process the user started, as they would in production."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest
from crash_harness import Acked, Load, verify_after_crash
from subscriber import Subscriber
from support import (
    DaemonFactory,
    append,
    error_info,
    events,
    get_event,
    head,
    info,
    new_event,
    read_all,
    read_stream,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess


@pytest.fixture
def daemon(daemon_factory: DaemonFactory, workers: int) -> DaemonProcess:
    return daemon_factory(workers=workers)


def test_restart_keeps_everything(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    sent: list[pb.ProposedEvent] = []
    for i in range(20):
        batch = [
            new_event(f"T{i % 4}", bytes([i, k]) * 50, metadata={"correlation_id": f"c{i}"})
            for k in range(i % 5 + 1)
        ]
        append(stub, f"stream-{i % 3}", batch)
        sent.extend(batch)
    before = read_all(stub)
    streams_before = {s: read_stream(stub, s) for s in ("stream-0", "stream-1", "stream-2")}
    info_before = info(stub)
    assert len(before) == len(sent)

    assert daemon.stop() == 0, "SIGTERM must exit 0"
    daemon.start()
    stub = daemon.stub()

    after = read_all(stub)
    assert after == before  # every field, incl. checksum and recorded_at
    for s, evs in streams_before.items():
        assert read_stream(stub, s) == evs
    for rec in before:
        assert get_event(stub, rec.event_id) == rec
    assert info(stub).head_position == info_before.head_position
    # Writing continues where it left off.
    resp = append(stub, "stream-0", events(1))
    assert resp.first_position == len(sent) + 1
    assert resp.last_revision == streams_before["stream-0"][-1].revision + 1
    # Idempotency survives the restart.
    last = before[-1]
    replay = pb.ProposedEvent(
        event_id=last.event_id,
        event_type=last.event_type,
        data=last.data,
        content_type=last.content_type,
        metadata=dict(last.metadata),
    )
    h = head(stub)
    retry = append(stub, last.stream, replay)
    assert (retry.first_position, retry.last_position) == (last.position, last.position)
    assert head(stub) == h
    assert daemon.stop() == 0


def test_restart_empty_store(daemon: DaemonProcess) -> None:
    assert daemon.stop() == 0
    daemon.start()
    stub = daemon.stub()
    assert head(stub) == 0
    assert read_all(stub) == []
    assert append(stub, "s", events(1)).first_position == 1


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["fsync", "async"])
def test_kill9_during_writes_loses_no_acknowledged_event(
    daemon_factory: DaemonFactory, durability: str, workers: int
) -> None:
    d = daemon_factory(extra_args=["--durability", durability], workers=workers)
    expected_durability = pb.DURABILITY_FSYNC if durability == "fsync" else pb.DURABILITY_ASYNC
    assert info(d.stub()).durability == expected_durability
    acked: dict[str, Acked] = {}
    sent: dict[str, tuple[str, pb.ProposedEvent]] = {}
    previous: list[pb.RecordedEvent] = []
    for cycle in range(2):
        load = Load(d, max_appends=3000)
        load.start([(f"single{cycle}a", 1), (f"single{cycle}b", 1), (f"batch{cycle}", 50)])
        # Kill once a fair amount was acknowledged (bounded wait).
        deadline = time.monotonic() + 60
        while load.acked_count() < 2000 and time.monotonic() < deadline:
            if load.errors.errors or not any(t.is_alive() for t in load.threads):
                break
            time.sleep(0.01)
        assert load.acked_count() > 0, "no append acknowledged before the kill"
        d.kill9()
        load.stop.set()
        load.join()
        assert load.failures, "the kill did not interrupt the load (raise max_appends)"
        # A kill is all that stopped it: no append was refused (as a commit
        # that disagrees with the disk would be, between two workers).
        assert set(load.failures) == {grpc.StatusCode.UNAVAILABLE}, load.failures
        acked.update(load.acked)
        sent.update(load.sent)

        d.start()
        stub = d.stub()
        got = verify_after_crash(stub, acked, sent, previous)
        # The store takes writes again right after the restart.
        extra = events(2)
        resp = append(stub, "after-crash", extra)
        assert resp.first_position == len(got) + 1
        for ev in extra:
            sent[ev.event_id] = ("after-crash", ev)
        previous = read_all(stub)
    assert d.stop() == 0


def _sigterm_under_load(daemon: DaemonProcess, sig: int = signal.SIGTERM) -> tuple[Load, int]:
    load = Load(daemon, max_appends=3000)
    load.start([("t1", 1), ("t2", 1), ("t3", 20)])
    deadline = time.monotonic() + 60
    while load.acked_count() < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert load.acked_count() > 0
    code = daemon.stop(sig=sig)
    load.stop.set()
    load.join()
    return load, code


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_under_load_exits_zero_and_keeps_acknowledged(
    daemon: DaemonProcess, sig: int
) -> None:
    load, code = _sigterm_under_load(daemon, sig)
    assert code == 0, f"{signal.Signals(sig).name} under load exited {code}"
    daemon.start()
    verify_after_crash(daemon.stub(), load.acked, load.sent)


class Appender(threading.Thread):
    """One append on a channel of its own (DaemonProcess.stop closes the
    daemon's), so the call sees what the daemon does while it stops."""

    def __init__(self, daemon: DaemonProcess, stream: str) -> None:
        super().__init__(daemon=True)
        self.events = events(1)
        self.request = pb.AppendRequest(stream=stream, events=self.events)
        self.channel = grpc.insecure_channel(daemon.address)
        self.response: pb.AppendResponse | None = None
        self.error: grpc.RpcError | None = None

    def run(self) -> None:
        try:
            stub = pb_grpc.EventStoreServiceStub(self.channel)
            self.response = stub.Append(self.request, timeout=60)
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.channel.close()

    def done(self) -> bool:
        self.join(60)
        assert not self.is_alive(), "an append was never answered"
        return True


def _fill_the_queue(daemon: DaemonProcess, queue: int) -> tuple[Appender, list[Appender]]:
    """Hold the writer in a commit pause (``faults.py``) with ``queue`` appends
    of this one client pending (its share: half of ``--max-queue``, the other
    half being kept for other clients, ``writer.py``): the first, committed
    and paused before its answer, and the rest queued behind it. Returns the
    first and the queued ones. Appends are sent until ``queue`` of them were
    refused as OVERLOADED: the queue cannot drain during the pause, so exactly
    ``queue - 1`` others are in it by then."""
    stub = daemon.stub()
    first = Appender(daemon, "first")
    first.start()
    deadline = time.monotonic() + 30
    while head(stub) < 1:  # durable; the writer pauses before answering it
        assert time.monotonic() < deadline and first.is_alive(), first.error
        time.sleep(0.01)
    tries = [Appender(daemon, f"queued-{i}") for i in range(2 * queue - 1)]
    for t in tries:
        t.start()
    refused: list[Appender] = []
    while len(refused) < queue:
        assert time.monotonic() < deadline, f"only {len(refused)} appends refused"
        refused = [t for t in tries if not t.is_alive() and t.error is not None]
        time.sleep(0.01)
    for t in refused:
        assert t.error is not None and t.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    queued = [t for t in tries if t not in refused]
    assert len(queued) == queue - 1 and all(t.is_alive() for t in queued)
    return first, queued


def _stored_ids(daemon: DaemonProcess) -> list[str]:
    """Restart the stopped daemon; the ids of every event in its log, in order."""
    daemon.start()
    return [e.event_id for e in read_all(daemon.stub())]


def test_sigterm_answers_queued_appends_and_refuses_late_ones(
    daemon_factory: DaemonFactory,
) -> None:
    """Drain, deterministically: SIGTERM arrives while the writer holds one
    append in a commit pause and three queued. All four are committed and
    answered; an append sent once the daemon is draining gets UNAVAILABLE with
    SHUTTING_DOWN (recoverable), not CANCELLED, which gRPC gives calls a
    stopped server had not handed to a handler (grpc/grpc#41785) and which a
    client reads as its own cancellation and does not retry."""
    env = {**os.environ, COMMIT_PAUSE_MS: "1500"}
    d = daemon_factory(extra_args=["--max-queue", "8"], env=env)  # this client's share: 4
    draining = Subscriber(d.stub(), pb.SubscribeOptions(from_end={}))
    draining.next_kind("caught_up_position")
    first, queued = _fill_the_queue(d, 4)
    os.kill(d.pid, signal.SIGTERM)
    # The daemon ends subscriptions once it refuses new appends.
    while draining.next() is not None:
        pass
    assert draining.error is not None
    assert draining.error.code() == grpc.StatusCode.UNAVAILABLE, draining.error
    late = Appender(d, "late")
    late.run()
    assert late.error is not None, "an append was taken while the daemon drained"
    assert late.error.code() == grpc.StatusCode.UNAVAILABLE, late.error
    ei = error_info(late.error)
    assert (ei.reason, ei.metadata["failure_class"]) == ("SHUTTING_DOWN", "recoverable"), ei
    answered = [first, *queued]
    for t in answered:
        assert t.done() and t.response is not None, f"a queued append got {t.error}"
    assert sorted(t.response.first_position for t in answered if t.response) == [1, 2, 3, 4]
    assert d.stop(timeout=60) == 0
    assert _stored_ids(d) == [
        t.events[0].event_id
        for t in sorted(answered, key=lambda t: t.response.first_position if t.response else 0)
    ]


def test_an_append_still_queued_after_the_grace_is_committed(
    daemon_factory: DaemonFactory,
) -> None:
    """With no grace and a commit pause longer than the drain waits (2 s), the
    server stops while three appends are still queued: their callers get an
    error (they retry with the same ids), and the writer commits them all the
    same before the daemon exits (README, "Operations")."""
    env = {**os.environ, COMMIT_PAUSE_MS: "5000"}
    d = daemon_factory(extra_args=["--max-queue", "8", "--shutdown-grace-seconds", "0"], env=env)
    first, queued = _fill_the_queue(d, 4)
    assert d.stop(timeout=60) == 0
    for t in (first, *queued):
        assert t.done() and t.error is not None, "answered after the grace ran out"
        assert t.error.code() == grpc.StatusCode.UNAVAILABLE, t.error  # retryable
    stored = _stored_ids(d)
    assert stored[0] == first.events[0].event_id
    assert sorted(stored[1:]) == sorted(t.events[0].event_id for t in queued)
