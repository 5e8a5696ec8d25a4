"""Streaming calls are capped per client and in all (``stream_caps.py``), on a
real daemon with real open streams."""

from __future__ import annotations

import time

import grpc
import pytest
from support import DaemonFactory, append, assert_clean_message, error_info, events

from lighthouse_proto.v1 import store_pb2 as pb


@pytest.mark.parametrize("flag", ["--max-streams-per-client", "--max-streams"])
def test_streaming_calls_are_capped(daemon_factory: DaemonFactory, flag: str) -> None:
    d = daemon_factory(extra_args=[flag, "3"])
    stub = d.stub()
    append(stub, "s", events(1))
    open_calls = []
    for _ in range(3):
        sub = stub.Subscribe(iter([pb.SubscribeRequest(options=pb.SubscribeOptions())]),
                             timeout=60)  # fmt: skip
        next(sub)  # confirmed: counted
        open_calls.append(sub)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Read(pb.ReadRequest(stream="s"), timeout=30))
        err = refused.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(err).reason == "RESOURCE_CAP"
        assert error_info(err).metadata["failure_class"] == "recoverable"
        assert f"({flag})" in (err.details() or "")
        assert_clean_message(err, d.data_dir)
        assert stub.GetInfo(pb.GetInfoRequest(), timeout=30).head_position == 1  # unary: not capped
    finally:
        for call in open_calls:
            call.cancel()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the cancelled calls leave the count
        try:
            assert len(list(stub.Read(pb.ReadRequest(stream="s"), timeout=30))) == 1
            return
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
    raise AssertionError("the cap did not let a new call in after the others ended")
