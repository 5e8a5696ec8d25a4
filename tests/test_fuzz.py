"""Property-based fuzzing of every RPC against one real daemon (hypothesis).

Two kinds of input: structured requests with extreme values (huge and
boundary integers, empty, huge, control-character, path-traversal and odd
Unicode strings, big metadata maps, unknown enum values), and raw random
bytes sent with identity serializers. Whatever comes in:

- the daemon never answers INTERNAL or UNKNOWN, and keeps running;
- no answer carries a stack trace, a file path or the data dir;
- every error carries a ``google.rpc.ErrorInfo`` with a failure class;
- a canary stream written before stays byte-identical.

``HYPOTHESIS_PROFILE=fuzz`` (``./dev fuzz``) runs 10,000 examples per test;
the default ``ci`` profile runs a few hundred in all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import error_info

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.testing import DaemonProcess

settings.register_profile(
    "ci", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
settings.register_profile(
    "fuzz", max_examples=10_000, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

U64 = 2**64 - 1
SERVICE = "/lighthouse.store.v1.EventStoreService/"
ADMIN = "/lighthouse.store.v1.AdminService/"
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", " ", "../../etc/passwd", "/etc/passwd", "..", ".", "$all", "$system", "$", "a/b",
        "a\\b", "\x00", "a\x00b", "\n", "\x7f", "\u202e", "\ufeff", "\U0001f600", "é" * 300,
        "x" * 5000, "%s%n", "{}", "null", "CON", "a" * 256, "a" * 257,
    ]),
)  # fmt: skip
big_int = st.one_of(st.integers(0, 10), st.sampled_from([U64, U64 - 1, 2**63, 2**63 - 1, 2**32]))
event_id = st.one_of(odd_text, st.uuids().map(str), st.just("00000000-0000-0000-0000-000000000000"))
metadata = st.dictionaries(odd_text, odd_text, max_size=5) | st.just(
    {f"k{i}": "v" for i in range(100)}
)


@st.composite
def proposed(draw: Any) -> pb.ProposedEvent:
    return pb.ProposedEvent(
        event_id=draw(event_id), event_type=draw(odd_text), data=draw(st.binary(max_size=64)),
        content_type=draw(odd_text), metadata=draw(metadata),
    )  # fmt: skip


@st.composite
def append_requests(draw: Any) -> pb.AppendRequest:
    req = pb.AppendRequest(stream=draw(odd_text), events=draw(st.lists(proposed(), max_size=4)))
    which = draw(st.sampled_from(["none", "any", "no_stream", "stream_exists", "exact"]))
    if which == "exact":
        req.exact = draw(big_int)
    elif which != "none":
        getattr(req, which).SetInParent()
    return req


def _filter(draw: Any) -> pb.EventFilter:
    return pb.EventFilter(
        stream_prefixes=draw(st.lists(odd_text, max_size=3)),
        event_types=draw(st.lists(odd_text, max_size=3)),
        correlation_id=draw(odd_text),
        streams=draw(st.lists(odd_text, max_size=3)),
    )


@st.composite
def read_requests(draw: Any) -> pb.ReadRequest:
    req = pb.ReadRequest(
        stream=draw(odd_text), direction=draw(st.integers(-5, 5)), max_count=draw(big_int),
    )  # fmt: skip
    start = draw(st.sampled_from(["none", "from_revision", "from_position"]))
    if start != "none":
        setattr(req, start, draw(big_int))
    if draw(st.booleans()):
        req.filter.CopyFrom(_filter(draw))
    for field in ("from_time", "to_time"):
        if draw(st.booleans()):
            ts = getattr(req, field)
            ts.seconds = draw(st.integers(-(2**62), 2**62))
            ts.nanos = draw(st.integers(-(2**31), 2**31 - 1))
    return req


@st.composite
def subscribe_options(draw: Any) -> pb.SubscribeOptions:
    options = pb.SubscribeOptions(
        consumer=draw(odd_text), initial_credits=draw(st.integers(0, 2**32 - 1)),
        checkpoint_interval=draw(st.integers(0, 2**32 - 1)),
        heartbeat_interval_ms=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip
    start = draw(st.sampled_from(["none", "from_start", "from_end", "after_position"]))
    if start == "after_position":
        options.after_position = draw(big_int)
    elif start != "none":
        getattr(options, start).SetInParent()
    if draw(st.booleans()):
        options.filter.CopyFrom(_filter(draw))
    return options


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("fuzz") / "data")
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def channel(daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(daemon.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def canary(channel: grpc.Channel) -> Iterator[Callable[[], bytes]]:
    """The canary stream's Read response, as raw bytes: written once, checked at the end."""
    stub = pb_grpc.EventStoreServiceStub(channel)
    events = [pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="Canary", data=b"c" * i)
              for i in range(1, 4)]  # fmt: skip
    stub.Append(pb.AppendRequest(stream="canary", events=events), timeout=30)
    read = channel.unary_stream(SERVICE + "Read")

    def raw() -> bytes:
        request = pb.ReadRequest(stream="canary").SerializeToString()
        return b"".join(read(request, timeout=30))

    before = raw()
    yield raw
    assert raw() == before, "the canary stream changed"


def check(err: grpc.RpcError | None, daemon: DaemonProcess) -> None:
    assert daemon.running(), "the daemon died"
    if err is None:
        return
    code = err.code()
    assert code not in NEVER, f"{code}: {err.details()}"
    message = err.details() or ""
    for leak in ("Traceback", 'File "', ".py", str(daemon.data_dir), "/tmp/"):
        assert leak not in message, f"{leak!r} in {message!r}"
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return  # the test's own deadline, not an answer
    error_info(err)  # exactly one ErrorInfo, with a failure class


def call(fn: Callable[[], Any]) -> grpc.RpcError | None:
    try:
        result = fn()
        if hasattr(result, "__next__"):
            for _ in result:
                pass
    except grpc.RpcError as err:
        return err
    return None


def first_answers(responses: Any, n: int) -> grpc.RpcError | None:
    """Take up to ``n`` messages of a subscription, then cancel it; its error, if any."""
    try:
        for _ in range(n):
            next(responses)
    except StopIteration:
        pass
    except grpc.RpcError as exc:
        return exc
    finally:
        responses.cancel()
    return None


@given(request=append_requests())
def test_append(request: pb.AppendRequest, channel: grpc.Channel, daemon: DaemonProcess,
                canary: Callable[[], bytes]) -> None:  # fmt: skip
    stub = pb_grpc.EventStoreServiceStub(channel)
    check(call(lambda: stub.Append(request, timeout=30)), daemon)


@given(request=read_requests())
def test_read(request: pb.ReadRequest, channel: grpc.Channel, daemon: DaemonProcess,
              canary: Callable[[], bytes]) -> None:  # fmt: skip
    stub = pb_grpc.EventStoreServiceStub(channel)
    check(call(lambda: stub.Read(request, timeout=30)), daemon)


@given(event=event_id)
def test_get_event(event: str, channel: grpc.Channel, daemon: DaemonProcess) -> None:
    stub = pb_grpc.EventStoreServiceStub(channel)
    check(call(lambda: stub.GetEvent(pb.GetEventRequest(event_id=event), timeout=30)), daemon)


@given(options=subscribe_options(), then=st.lists(
    st.one_of(big_int.map(lambda n: pb.SubscribeRequest(ack_position=n)),
              st.integers(0, 2**32 - 1).map(lambda n: pb.SubscribeRequest(credits=n))),
    max_size=3))  # fmt: skip
def test_subscribe(options: pb.SubscribeOptions, then: list[pb.SubscribeRequest],
                   channel: grpc.Channel, daemon: DaemonProcess) -> None:  # fmt: skip
    stub = pb_grpc.EventStoreServiceStub(channel)
    requests = [pb.SubscribeRequest(options=options), *then]
    check(first_answers(stub.Subscribe(iter(requests), timeout=2), 3), daemon)


@given(method=st.sampled_from(["Append", "Read", "GetEvent", "GetInfo", "Subscribe"]),
       raw=st.binary(max_size=512))  # fmt: skip
def test_raw_bytes(method: str, raw: bytes, channel: grpc.Channel, daemon: DaemonProcess) -> None:
    """Bytes that need not be a message at all, with identity serializers."""
    if method == "Subscribe":
        responses = channel.stream_stream(SERVICE + method)(iter([raw]), timeout=2)
        check(first_answers(responses, 1), daemon)
    elif method == "Read":
        check(call(lambda: channel.unary_stream(SERVICE + method)(raw, timeout=30)), daemon)
    else:
        check(call(lambda: channel.unary_unary(SERVICE + method)(raw, timeout=30)), daemon)


@given(method=st.sampled_from(["GetStatus", "Degrade", "Recover"]), raw=st.binary(max_size=64))
def test_admin_raw_bytes(method: str, raw: bytes, channel: grpc.Channel,
                         daemon: DaemonProcess) -> None:  # fmt: skip
    """The admin service, with bytes that are not a valid request (a valid
    Degrade would make the store read-only for the tests after it)."""
    try:
        parsed_ok = True
        kinds: dict[str, Any] = {"GetStatus": pb.GetStatusRequest,
                                 "Degrade": pb.DegradeRequest, "Recover": pb.RecoverRequest}
        message = kinds[method].FromString(raw)  # fmt: skip
    except Exception:
        parsed_ok = False
    if parsed_ok and method == "Degrade" and message.reason.strip():
        return  # a real degrade: not fuzzed here (tests/test_degradation.py)
    err = call(lambda: channel.unary_unary(ADMIN + method)(raw, timeout=60))
    check(err, daemon)


def test_the_daemon_is_alive_and_healthy_after_the_fuzzing(
    daemon: DaemonProcess, channel: grpc.Channel, canary: Callable[[], bytes]
) -> None:
    assert daemon.running()
    info = pb_grpc.EventStoreServiceStub(channel).GetInfo(pb.GetInfoRequest(), timeout=30)
    assert info.head_position >= 3
    assert Path(daemon.data_dir).exists()
