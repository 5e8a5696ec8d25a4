"""Malformed input gets INVALID_ARGUMENT naming the field; nothing is written;
the daemon stays healthy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import (
    DaemonFactory,
    append,
    append_request,
    assert_invalid,
    events,
    expect_code,
    head,
    new_event,
    new_id,
    rpc_error,
    uuid7,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

# Small limits so "just over" and "just at" are cheap to build.
LIMIT_ARGS = [
    "--max-event-data-bytes", "1000",
    "--max-events-per-append", "10",
    "--max-append-bytes", "5000",
    "--max-metadata-entries", "4",
    "--max-metadata-bytes", "200",
]  # fmt: skip


@dataclass
class Env:
    daemon: DaemonProcess
    stub: Any


@pytest.fixture(scope="module")
def env(module_daemon_factory: DaemonFactory) -> Env:
    d = module_daemon_factory(extra_args=LIMIT_ARGS)
    stub = d.stub()
    append(stub, "existing", events(2))
    return Env(d, stub)


def bad_append(env: Env, req: pb.AppendRequest, field: str | None) -> None:
    before = head(env.stub)
    err = rpc_error(env.stub.Append, req)
    assert_invalid(err, field, env.daemon.data_dir)
    assert head(env.stub) == before, "an invalid append moved the head"
    assert env.daemon.running()


def good_append(env: Env, req: pb.AppendRequest) -> None:
    before = head(env.stub)
    resp = env.stub.Append(req, timeout=60)
    assert resp.first_position == before + 1
    assert resp.last_position == before + len(req.events)


# -- stream names --------------------------------------------------------

BAD_STREAMS = [
    "",
    ".",
    "..",
    "a/b",
    "/abs",
    "a\\b",
    "a\x00b",
    "tab\there",
    "new\nline",
    "bell\x07",
    "del\x7f",
    "nel\x85",  # C1 controls, like C0
    "csi\x9b",
    "space here",
    "star*",
    "q?",
    "caf\u00e9",
    "emoji\U0001f600",
    "x" * 256,
    "$system",
    "$all",
    "$",
    "$custom",
]


@pytest.mark.parametrize("stream", BAD_STREAMS, ids=repr)
def test_bad_stream_name(env: Env, stream: str) -> None:
    bad_append(env, append_request(stream, events(1)), "stream")


GOOD_STREAMS = ["x" * 255, "a", "a-b_c.d:e@f", "...", ".hidden", "x.", "A9", "user@host:1"]


@pytest.mark.parametrize("stream", GOOD_STREAMS)
def test_good_stream_name(env: Env, stream: str) -> None:
    good_append(env, append_request(stream, events(1)))


@pytest.mark.parametrize("stream", ["a/b", "..", "x" * 256, "tab\there", "nel\x85"], ids=repr)
def test_bad_stream_name_on_read(env: Env, stream: str) -> None:
    err = rpc_error(env.stub.Read, pb.ReadRequest(stream=stream))
    assert_invalid(err, "stream", env.daemon.data_dir)


# -- event ids -----------------------------------------------------------

U = "0f8fad5b-d9cb-469f-a165-70867728950e"  # fixed: stable test ids
BAD_IDS = [
    "",
    "nope",
    U.replace("-", ""),  # 32 hex digits, no dashes
    U + "0",  # 37 chars
    U[:-1],  # 35 chars
    "{" + U + "}",
    "urn:uuid:" + U,
    U[:-1] + "g",  # not hex
    U.replace("-", "_"),
    " " + U,
    U + "\n",
    U[:7] + "-" + U[7] + U[9:],  # a dash in the wrong place
]


@pytest.mark.parametrize("event_id", BAD_IDS, ids=repr)
def test_bad_event_id(env: Env, event_id: str) -> None:
    ev = new_event()
    ev.event_id = event_id
    bad_append(env, append_request("s", [ev]), "events[0].event_id")


def test_bad_event_id_is_named_by_index(env: Env) -> None:
    batch = events(3)
    batch[2].event_id = "nope"
    bad_append(env, append_request("s", batch), "events[2].event_id")


@pytest.mark.parametrize(
    "cut",
    [
        lambda a, b: [a[:10], a[10:] + b, ""],  # the right characters cut in the wrong places
        lambda a, b: [a[:10], a[10:] + b],
        lambda a, b: ["", a],
        lambda a, b: [a + "\n" + b],
    ],
)
def test_ids_of_a_batch_are_checked_one_by_one(
    env: Env, cut: Callable[[str, str], list[str]]
) -> None:
    """A batch whose ids together hold the characters of good UUIDs, cut in the
    wrong places, is rejected whole (not stored as fewer, oddly named events)."""
    good_append(env, append_request("warm", events(2)))  # the event type is known now
    ids = cut(new_id(), new_id())
    batch = events(len(ids))
    for ev, event_id in zip(batch, ids, strict=True):
        ev.event_id = event_id
    bad_append(env, append_request("cut", batch), "event_id")
    expect_code(grpc.StatusCode.NOT_FOUND, env.stub.Read, pb.ReadRequest(stream="cut"))


def test_uuid7_and_uuid4_accepted(env: Env) -> None:
    good_append(env, append_request("ids", [new_event(event_id=uuid7()), new_event()]))


def test_duplicate_ids_in_one_batch(env: Env) -> None:
    batch = events(3)
    batch[2].event_id = batch[0].event_id
    bad_append(env, append_request("dups", batch), "event_id")
    expect_code(grpc.StatusCode.NOT_FOUND, env.stub.Read, pb.ReadRequest(stream="dups"))


def test_duplicate_identical_events_in_one_batch(env: Env) -> None:
    ev = new_event()
    bad_append(env, append_request("dups", [ev, ev]), "event_id")


# -- event types ---------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "",
        "x" * 256,
        "a\nb",
        "a\x00b",
        "tab\t",
        "\x1b[31m",
        "a\x7fb",
        "a\x80b",
        "a\x85b",
        "\x9b31m",
        "a\x9fb",
    ],  # C1 (U+0080-U+009F) like C0
    ids=repr,
)
def test_bad_event_type(env: Env, event_type: str) -> None:
    ev = new_event()
    ev.event_type = event_type
    bad_append(env, append_request("s", [ev]), "event_type")


@pytest.mark.parametrize(
    "event_type",
    ["x" * 255, "a", "Order Placed", "order.placed/v2", "\u00e9v\u00e9nement", "~\u00a0"],
)
def test_good_event_type(env: Env, event_type: str) -> None:
    good_append(env, append_request("types", [new_event(event_type)]))


# -- sizes and counts (limits of the env daemon) ---------------------------


def test_data_at_limit_ok(env: Env) -> None:
    good_append(env, append_request("sizes", [new_event("T", b"x" * 1000)]))


def test_data_over_limit(env: Env) -> None:
    bad_append(env, append_request("sizes", [new_event("T", b"x" * 1001)]), "data")


def test_data_over_limit_named_by_index(env: Env) -> None:
    batch = [new_event("T", b"x"), new_event("T", b"x" * 1001)]
    bad_append(env, append_request("sizes", batch), "events[1].data")


def test_zero_events(env: Env) -> None:
    bad_append(env, pb.AppendRequest(stream="s"), "events")


def test_events_at_limit_ok(env: Env) -> None:
    good_append(env, append_request("counts", events(10)))


def test_too_many_events(env: Env) -> None:
    bad_append(env, append_request("counts", events(11)), "events")


def test_append_bytes_under_limit_ok(env: Env) -> None:
    good_append(env, append_request("bytes", [new_event("T", b"x" * 900) for _ in range(4)]))


def test_append_bytes_over_limit(env: Env) -> None:
    # Each event is within the data limit, the request is not (6 x 1000 > 5000).
    req = append_request("bytes", [new_event("T", b"x" * 1000) for _ in range(6)])
    bad_append(env, req, "events")


def test_metadata_entries_at_limit_ok(env: Env) -> None:
    md = {f"k{i}": "v" for i in range(4)}
    good_append(env, append_request("md", [new_event(metadata=md)]))


def test_metadata_too_many_entries(env: Env) -> None:
    md = {f"k{i}": "v" for i in range(5)}
    bad_append(env, append_request("md", [new_event(metadata=md)]), "metadata")


def test_metadata_bytes_under_limit_ok(env: Env) -> None:
    good_append(env, append_request("md", [new_event(metadata={"k": "v" * 150})]))


def test_metadata_too_big(env: Env) -> None:
    bad_append(env, append_request("md", [new_event(metadata={"k": "v" * 250})]), "metadata")


def test_metadata_too_big_across_entries(env: Env) -> None:
    md = {f"k{i}": "v" * 60 for i in range(4)}  # 4 entries (ok), ~250 bytes (not ok)
    bad_append(env, append_request("md", [new_event(metadata=md)]), "metadata")


def test_one_bad_event_in_batch_writes_nothing(env: Env) -> None:
    batch = events(5)
    batch[3].metadata.update({f"k{i}": "v" for i in range(9)})
    bad_append(env, append_request("atomic", batch), "events[3].metadata")
    expect_code(grpc.StatusCode.NOT_FOUND, env.stub.Read, pb.ReadRequest(stream="atomic"))


# -- reads and lookups -----------------------------------------------------


def _ts(seconds: int, nanos: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


BAD_READS: list[tuple[str, Callable[[], pb.ReadRequest]]] = [
    ("from_position-on-stream", lambda: pb.ReadRequest(stream="existing", from_position=1)),
    ("from_revision-on-all", lambda: pb.ReadRequest(stream="$all", from_revision=0)),
    ("from_revision-on-empty", lambda: pb.ReadRequest(stream="", from_revision=3)),
    ("unknown-direction", lambda: pb.ReadRequest(stream="$all", direction=7)),  # type: ignore[arg-type]
    ("bad-from-nanos", lambda: pb.ReadRequest(stream="$all", from_time=_ts(1, 2_000_000_000))),
    ("negative-to-nanos", lambda: pb.ReadRequest(stream="existing", to_time=_ts(1, -5))),
]


@pytest.mark.parametrize(("name", "make"), BAD_READS, ids=[b[0] for b in BAD_READS])
def test_bad_read(env: Env, name: str, make: Callable[[], pb.ReadRequest]) -> None:
    err = rpc_error(env.stub.Read, make())
    assert_invalid(err, None, env.daemon.data_dir)


@pytest.mark.parametrize("event_id", ["", "nope", U.replace("-", ""), U + "0"], ids=repr)
def test_bad_get_event(env: Env, event_id: str) -> None:
    err = rpc_error(env.stub.GetEvent, pb.GetEventRequest(event_id=event_id))
    assert_invalid(err, "event_id", env.daemon.data_dir)


def test_default_limits(daemon: DaemonProcess) -> None:
    """The default limits: 1 MiB data, 1000 events per append."""
    stub = daemon.stub()
    lim = stub.GetInfo(pb.GetInfoRequest(), timeout=10).limits
    assert lim.max_event_data_bytes == 1 << 20
    assert lim.max_events_per_append == 1000
    assert lim.max_append_bytes == 16 << 20
    assert lim.max_metadata_entries == 64
    assert lim.max_metadata_bytes == 16 << 10
    assert append(stub, "big", new_event("T", b"x" * (1 << 20))).last_position == 1
    err = rpc_error(stub.Append, append_request("big", [new_event("T", b"x" * ((1 << 20) + 1))]))
    assert_invalid(err, "data", daemon.data_dir)
    assert append(stub, "many", events(1000)).last_position == 1001
    err = rpc_error(stub.Append, append_request("many", events(1001)))
    assert_invalid(err, "events", daemon.data_dir)
    md = {f"k{i}": "v" for i in range(65)}
    err = rpc_error(stub.Append, append_request("md", [new_event(metadata=md)]))
    assert_invalid(err, "metadata", daemon.data_dir)
    assert head(stub) == 1001


def test_custom_limits_reported(env: Env) -> None:
    lim = env.stub.GetInfo(pb.GetInfoRequest(), timeout=10).limits
    assert (
        lim.max_event_data_bytes,
        lim.max_events_per_append,
        lim.max_append_bytes,
        lim.max_metadata_entries,
        lim.max_metadata_bytes,
    ) == (1000, 10, 5000, 4, 200)


# -- afterwards ------------------------------------------------------------


def test_daemon_still_healthy_after_bad_input(env: Env) -> None:
    """Runs last in this module: everything above did not hurt the daemon."""
    assert env.daemon.running()
    health = health_pb2_grpc.HealthStub(env.daemon.channel())
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    h = head(env.stub)
    good_append(env, append_request("after", events(3)))
    assert head(env.stub) == h + 3
    # Every recorded event is one of a good append: the stream names tell.
    names = {e.stream for p in env.stub.Read(pb.ReadRequest(stream="$all")) for e in p.events}
    allowed = {"existing", "ids", "warm", "types", "sizes", "counts", "bytes", "md", "after"}
    allowed |= set(GOOD_STREAMS)
    assert names <= allowed, names - allowed


@pytest.mark.parametrize("method", ["Append", "Read", "GetEvent", "GetInfo"])
def test_malformed_wire_bytes_are_invalid_argument(daemon: DaemonProcess, method: str) -> None:
    channel = daemon.channel()
    call = channel.unary_unary(
        f"/lighthouse.store.v1.EventStoreService/{method}",
        request_serializer=None,
        response_deserializer=None,
    )
    bad = b"\x0a\x02\xff\xfe"  # field 1, a string holding invalid UTF-8
    try:
        if method == "Read":
            list(
                channel.unary_stream(f"/lighthouse.store.v1.EventStoreService/{method}")(
                    bad, timeout=30
                )
            )
        else:
            call(bad, timeout=30)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "not a valid" in (err.details() or "")
        assert "DecodeError" not in (err.details() or "")
    else:
        if method != "GetInfo":  # GetInfoRequest has no field 1: unknown fields are fine
            raise AssertionError("malformed request accepted")
