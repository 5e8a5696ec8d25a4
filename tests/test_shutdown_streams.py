"""SIGTERM ends streams promptly (calls.py): open subscriptions and reads end
with UNAVAILABLE / SHUTTING_DOWN in the error details, a stalled reader does
not hold the daemon for the grace, and every acknowledged append is there
after the restart. Against one process and against two workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from support import (
    DaemonFactory,
    append_request,
    error_info,
    events,
    ids,
    positions,
    read_all,
    wait_until,
)

from lighthouse_client.exceptions import Unavailable, handle_rpc_error
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.calls import STREAM_END_S

GRACE_S = 30.0
BIG = b'"' + b"x" * 20_000 + b'"'  # so a stalled reader fills its flow-control windows


class Stream:
    """One streaming call consumed on a thread; what it received and how it ended."""

    def __init__(self, start: Any, *, pause: float = 0.0, stall_after: int | None = None) -> None:
        self.received = 0
        self.error: grpc.RpcError | None = None
        self.completed = False
        self.caught_up = threading.Event()
        self.resume = threading.Event()  # a stalled reader reads on once set
        self._start, self._pause, self._stall_after = start, pause, stall_after
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for message in self._start():
                self.received += 1
                if isinstance(message, pb.SubscribeResponse) and message.HasField(
                    "caught_up_position"
                ):
                    self.caught_up.set()
                if self.received == self._stall_after:
                    self.resume.wait(60)
                time.sleep(self._pause)
            self.completed = True
        except grpc.RpcError as exc:
            self.error = exc

    def ended(self, timeout: float = 30.0) -> grpc.RpcError:
        self.resume.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        assert not self.completed, "the stream ran to its end instead of being cut short"
        assert self.error is not None
        return self.error


def _options_then_wait(options: pb.SubscribeOptions, done: threading.Event) -> Iterator[Any]:
    yield pb.SubscribeRequest(options=options)
    done.wait(60)


def _assert_shutting_down(err: grpc.RpcError) -> None:
    assert err.code() is grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
    info = error_info(err)
    assert info.reason == "SHUTTING_DOWN"
    assert info.metadata["failure_class"] == "recoverable"
    _assert_client_resumes(err)


def _assert_client_resumes(err: grpc.RpcError) -> None:
    """The client library reads it as a break to resume from (_subscription.py)."""
    error = handle_rpc_error(err)
    assert isinstance(error, Unavailable) and error.retryable, error


def test_sigterm_ends_streams_promptly_with_shutting_down(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(
        extra_args=["--shutdown-grace-seconds", str(GRACE_S), "--page-events", "10"],
        workers=workers,
    )
    stub = d.stub()
    acknowledged: list[str] = []
    for i in range(30):
        sent = events(10, data=BIG)
        stub.Append(append_request(f"s-{i}", sent), timeout=30)
        acknowledged += ids(sent)
    for _ in range(6):  # for the Read: 60 pages of 10 KiB
        sent = events(100, data=b'"' + b"y" * 1000 + b'"')
        stub.Append(append_request("paged", sent), timeout=30)
        acknowledged += ids(sent)
    hang_up = threading.Event()
    # Channels of their own: stop() closes the daemon's (and their calls with them).
    channels = [d.connect() for _ in range(2)]
    # A reader that keeps reading: without BDP probing the window stays at
    # 64 KiB, so the daemon is a few pages ahead at most, and it sees the
    # shutdown between two of them, as soon as the client takes one.
    channels.append(grpc.insecure_channel(d.address, options=[
        ("grpc.http2.bdp_probe", 0), ("grpc.use_local_subchannel_pool", 1)
    ]))  # fmt: skip
    stubs = [pb_grpc.EventStoreServiceStub(ch) for ch in channels]

    def subscribe(stub: Any, options: pb.SubscribeOptions) -> Any:
        return lambda: stub.Subscribe(_options_then_wait(options, hang_up), timeout=90)

    idle = Stream(subscribe(stubs[0], pb.SubscribeOptions(from_end={})))
    stalled = Stream(subscribe(stubs[1], pb.SubscribeOptions(from_start={})), stall_after=1)
    reading = Stream(lambda: stubs[2].Read(pb.ReadRequest(stream="paged"), timeout=90), pause=0.05)
    try:
        idle.caught_up.wait(30)
        wait_until(lambda: stalled.received and reading.received, "both streams under way")
        assert idle.caught_up.is_set() and not reading.completed

        started = time.monotonic()
        code = d.stop(timeout=GRACE_S + 30)
        took = time.monotonic() - started
        assert code == 0, d.log_text()[-3000:]
        # Well inside the grace: before, a stalled reader held the daemon for all of it.
        assert took < GRACE_S / 3, took

        _assert_shutting_down(idle.ended())
        _assert_shutting_down(reading.ended())
        # Its status could only follow data it never took: gRPC cancelled it
        # once STREAM_END_S had passed (calls.py), still UNAVAILABLE.
        assert STREAM_END_S < GRACE_S / 3
        cut = stalled.ended()
        assert cut.code() is grpc.StatusCode.UNAVAILABLE, (cut.code(), cut.details())
        _assert_client_resumes(cut)
    finally:
        hang_up.set()
        for ch in channels:
            ch.close()

    d.start()
    stored = read_all(d.stub())
    assert ids(stored) == acknowledged
    assert positions(stored) == list(range(1, len(acknowledged) + 1))
