"""Rate limits per principal (``ratelimit.py``): the buckets' arithmetic with
a fake clock, then a real daemon refusing and a real client waiting."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
from support import DaemonFactory, append_request, error_info, events, rpc_error

from lighthouse_client import NewEvent, StoreClient
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import access
from lighthouse_store.errors import RateLimited
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.ratelimit import MAX_PRINCIPALS, RateLimiter, Rates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_holds_a_seconds_worth_and_says_when_it_will_hold_more() -> None:
    clock = Clock()
    limiter = RateLimiter(Rates(requests=10, events=0, bytes=0, new_streams=0), clock)
    for _ in range(10):
        limiter.take("a", requests=1)
    with pytest.raises(RateLimited) as refused:
        limiter.take("a", requests=1)
    assert refused.value.retry_after_ms == 100  # one request refills in 0.1 s
    assert "--rate-requests" in refused.value.message
    limiter.take("b", requests=1)  # another principal has its own bucket
    clock.now += 0.1
    limiter.take("a", requests=1)


def test_all_or_nothing_and_new_streams_charged_after_into_debt() -> None:
    clock = Clock()
    limiter = RateLimiter(Rates(requests=0, events=100, bytes=1000, new_streams=2), clock)
    limiter.take("a", events=50, bytes=900)
    with pytest.raises(RateLimited):
        limiter.take("a", events=10, bytes=200)  # bytes refused: the events are not taken
    limiter.take("a", events=50, bytes=100)
    for _ in range(3):
        limiter.charge("a", "new_streams", 1)  # one more than the bucket held
    with pytest.raises(RateLimited) as refused:
        limiter.take("a", new_streams=1)
    assert refused.value.retry_after_ms == 1000  # from -1 back to 1 at 2 a second


def test_zero_is_no_limit_and_the_table_of_principals_is_bounded() -> None:
    clock = Clock()
    assert not RateLimiter(Rates(0, 0, 0, 0), clock).enabled
    limiter = RateLimiter(Rates(requests=1, events=0, bytes=0, new_streams=0), clock)
    for i in range(MAX_PRINCIPALS + 50):
        limiter.take(f"peer:{i}", requests=1)
    assert len(limiter._buckets) == MAX_PRINCIPALS


def test_the_daemon_refuses_over_the_limit_and_the_client_waits(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(extra_args=["--rate-requests", "5"])
    stub = d.stub()
    codes = []
    for _ in range(10):
        try:
            stub.GetInfo(pb.GetInfoRequest(), timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            err = exc
    assert codes.count(grpc.StatusCode.OK) <= 6  # 5, and one refilled meanwhile at most
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    info = error_info(err)
    assert info.reason == "RATE_LIMITED" and info.metadata["failure_class"] == "recoverable"
    # The client library waits the RetryInfo and gets through, call after call.
    with StoreClient(d.address, timeout=60) as client:
        for i in range(12):
            assert client.append(f"rated-{i}", NewEvent("T", b"{}")).last_position > 0


def test_appended_events_are_limited_before_anything_is_written(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(extra_args=["--rate-events", "100"])
    stub = d.stub()
    stub.Append(append_request("s", events(100)), timeout=30)
    err = rpc_error(stub.Append, append_request("s", events(50)))
    assert error_info(err).reason == "RATE_LIMITED"
    assert "--rate-events" in (err.details() or "")
    head = stub.GetInfo(pb.GetInfoRequest(), timeout=30).head_position
    assert head == 100  # the refused append wrote nothing


def test_one_flooding_client_cannot_get_anothers_appends_refused(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A tiny queue (4) behind a slow disk (each commit pauses 200 ms): the
    flooding principal holds at most its share, so the calm one always finds
    room (the issue measured 53% of its appends refused)."""
    tokens = {name: access.new_token() for name in ("flood", "calm")}
    path = tmp_path / "tokens.toml"
    grants = 'grants = [{ prefix = "", roles = ["append", "read"] }]\n'
    path.write_text("".join(f'[principals.{n}]\ntoken_sha256 = "{h}"\n{grants}'
                            for n, (_, h) in tokens.items()))  # fmt: skip
    env = {**os.environ, COMMIT_PAUSE_MS: "200"}
    d = daemon_factory(extra_args=["--max-queue", "4", "--tokens-file", str(path)], env=env)
    flood_md = (("authorization", f"Bearer {tokens['flood'][0]}"),)
    calm_md = (("authorization", f"Bearer {tokens['calm'][0]}"),)
    flood_stub, calm_stub = d.stub(), d.stub()
    refused_calm = refused_flood = 0
    for _ in range(3):
        flood = [flood_stub.Append.future(append_request("flood", events(1)), timeout=60,
                                          metadata=flood_md) for _ in range(12)]  # fmt: skip
        time.sleep(0.05)  # the flood is queued behind the first commit's pause
        try:
            calm_stub.Append(append_request("calm", events(1)), timeout=60, metadata=calm_md)
        except grpc.RpcError as exc:
            refused_calm += 1
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for f in flood:
            try:
                f.result()
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused_flood += 1
    assert refused_flood > 0  # the queue was contended
    assert refused_calm == 0


def test_new_streams_are_charged_after_and_the_next_append_waits(
    daemon_factory: DaemonFactory,
) -> None:
    """At one new stream a second: the first two appends create streams (the
    second takes the bucket into debt, since it is known to be new only once
    committed); the next append waits, whatever its stream."""
    d = daemon_factory(extra_args=["--rate-new-streams", "1"])
    stub = d.stub()
    stub.Append(append_request("new-1", events(1)), timeout=30)
    stub.Append(append_request("new-2", events(1)), timeout=30)
    err = rpc_error(stub.Append, append_request("new-1", events(1)))
    assert error_info(err).reason == "RATE_LIMITED"
    assert "--rate-new-streams" in (err.details() or "")


def test_appends_given_up_by_their_caller_still_count_in_its_share(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """A caller whose appends time out while queued leaves them in the queue:
    they still count against its share, so giving up and sending more cannot
    fill the queue and get another client refused."""
    tokens = {name: access.new_token() for name in ("flood", "calm")}
    path = tmp_path / "tokens.toml"
    grants = 'grants = [{ prefix = "", roles = ["append", "read"] }]\n'
    path.write_text("".join(f'[principals.{n}]\ntoken_sha256 = "{h}"\n{grants}'
                            for n, (_, h) in tokens.items()))  # fmt: skip
    env = {**os.environ, COMMIT_PAUSE_MS: "3000"}
    d = daemon_factory(extra_args=["--max-queue", "4", "--tokens-file", str(path)], env=env)
    flood_md = (("authorization", f"Bearer {tokens['flood'][0]}"),)
    calm_md = (("authorization", f"Bearer {tokens['calm'][0]}"),)
    stub = d.stub()
    first = stub.Append.future(append_request("flood", events(1)), timeout=60, metadata=flood_md)
    deadline = time.monotonic() + 30
    while stub.GetInfo(pb.GetInfoRequest(), timeout=30, metadata=flood_md).head_position < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)  # committed; the writer is in its pause, the queue fills behind it
    for _ in range(3):
        err = rpc_error(stub.Append, append_request("flood", events(1)), timeout=0.2,
                        metadata=flood_md)  # fmt: skip
        assert err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    stub.Append(append_request("calm", events(1)), timeout=60, metadata=calm_md)  # not refused
    first.result()
