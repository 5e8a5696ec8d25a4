"""Read: streams and $all, both directions, starts, max_count, filters, time windows."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from support import (
    DaemonFactory,
    append,
    assert_clean_message,
    assert_matches,
    error_info,
    expect_code,
    get_event,
    ids,
    new_event,
    read,
    read_all,
    read_pages,
    read_stream,
    ts,
    ts_ns,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

FWD = pb.DIRECTION_FORWARDS
BWD = pb.DIRECTION_BACKWARDS

STREAMS = ["order-1", "order-2", "user-1", "inventory:1", "order-10"]
TYPES = ["Created", "Updated", "Deleted"]


@dataclass(frozen=True)
class Rec:
    position: int
    stream: str
    revision: int
    sent: pb.ProposedEvent

    @property
    def event_id(self) -> str:
        return self.sent.event_id

    @property
    def type(self) -> str:
        return self.sent.event_type

    @property
    def corr(self) -> str:
        return self.sent.metadata.get("correlation_id", "")


@dataclass
class Populated:
    daemon: DaemonProcess
    stub: Any
    model: list[Rec]

    def stream(self, name: str) -> list[Rec]:
        return [r for r in self.model if r.stream == name]


@pytest.fixture(scope="module")
def pop(module_daemon_factory: DaemonFactory) -> Populated:
    """A daemon holding 60 events in 5 streams, appended in batches of 3."""
    d = module_daemon_factory()
    stub = d.stub()
    model: list[Rec] = []
    i = 0
    for batch_no in range(20):
        stream = STREAMS[batch_no % len(STREAMS)]
        batch = []
        for _ in range(3):
            md = {"source": "read-tests"}
            if i % 2 == 0:
                md["correlation_id"] = f"corr-{i % 5}"
            batch.append(new_event(TYPES[i % 3], f'{{"i": {i}}}'.encode(), metadata=md))
            i += 1
        resp = append(stub, stream, batch)
        for k, ev in enumerate(batch):
            model.append(
                Rec(
                    position=resp.first_position + k,
                    stream=stream,
                    revision=resp.last_revision - (len(batch) - 1 - k),
                    sent=ev,
                )
            )
    assert [r.position for r in model] == list(range(1, 61))
    return Populated(d, stub, model)


def check(got: list[pb.RecordedEvent], want: list[Rec]) -> None:
    assert [(e.position, e.stream, e.revision, e.event_id) for e in got] == [
        (r.position, r.stream, r.revision, r.event_id) for r in want
    ]
    for e, r in zip(got, want, strict=True):
        assert_matches(e, r.sent)


# -- stream reads --------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_stream_forwards(pop: Populated, name: str) -> None:
    want = pop.stream(name)
    assert [r.revision for r in want] == list(range(len(want)))
    check(read_stream(pop.stub, name), want)
    check(read_stream(pop.stub, name, direction=FWD), want)
    check(read_stream(pop.stub, name, direction=pb.DIRECTION_UNSPECIFIED), want)


def test_stream_backwards(pop: Populated) -> None:
    want = pop.stream("order-1")
    check(read_stream(pop.stub, "order-1", direction=BWD), want[::-1])


def test_stream_from_revision_forwards_inclusive(pop: Populated) -> None:
    want = pop.stream("order-1")
    check(read_stream(pop.stub, "order-1", from_revision=4), want[4:])
    check(read_stream(pop.stub, "order-1", from_revision=0), want)
    check(read_stream(pop.stub, "order-1", from_revision=len(want) - 1), want[-1:])


def test_stream_from_revision_backwards_inclusive(pop: Populated) -> None:
    want = pop.stream("order-1")
    check(read_stream(pop.stub, "order-1", direction=BWD, from_revision=4), want[:5][::-1])
    check(read_stream(pop.stub, "order-1", direction=BWD, from_revision=0), want[:1])


def test_stream_max_count(pop: Populated) -> None:
    want = pop.stream("user-1")
    check(read_stream(pop.stub, "user-1", max_count=2), want[:2])
    check(read_stream(pop.stub, "user-1", max_count=2, direction=BWD), want[::-1][:2])
    check(read_stream(pop.stub, "user-1", max_count=3, from_revision=1), want[1:4])
    check(
        read_stream(pop.stub, "user-1", max_count=3, from_revision=4, direction=BWD),
        want[2:5][::-1],
    )
    check(read_stream(pop.stub, "user-1", max_count=1000), want)
    check(read_stream(pop.stub, "user-1", max_count=0), want)


def test_stream_from_revision_past_end_is_empty(pop: Populated) -> None:
    n = len(pop.stream("user-1"))
    assert read_stream(pop.stub, "user-1", from_revision=n) == []
    assert read_stream(pop.stub, "user-1", from_revision=10_000) == []


def test_stream_backwards_from_revision_past_end_starts_at_last(pop: Populated) -> None:
    want = pop.stream("user-1")
    check(read_stream(pop.stub, "user-1", direction=BWD, from_revision=10_000), want[::-1])


def test_stream_prefix_is_not_a_stream(pop: Populated) -> None:
    """order-1 must not include order-10."""
    got = read_stream(pop.stub, "order-1")
    assert {e.stream for e in got} == {"order-1"}


def test_missing_stream_is_not_found(pop: Populated) -> None:
    err = expect_code(grpc.StatusCode.NOT_FOUND, pop.stub.Read, pb.ReadRequest(stream="nope"))
    assert_clean_message(err, pop.daemon.data_dir)
    error_info(err)
    expect_code(
        grpc.StatusCode.NOT_FOUND,
        pop.stub.Read,
        pb.ReadRequest(stream="nope", direction=BWD, max_count=5),
    )


def test_from_position_on_stream_read_is_invalid(pop: Populated) -> None:
    err = expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        pop.stub.Read,
        pb.ReadRequest(stream="order-1", from_position=1),
    )
    assert_clean_message(err, pop.daemon.data_dir)


@pytest.mark.parametrize("stream", ["$all", ""])
def test_from_revision_on_all_read_is_invalid(pop: Populated, stream: str) -> None:
    err = expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        pop.stub.Read,
        pb.ReadRequest(stream=stream, from_revision=0),
    )
    assert_clean_message(err, pop.daemon.data_dir)


# -- $all reads ----------------------------------------------------------


@pytest.mark.parametrize("stream", ["$all", ""])
def test_all_forwards(pop: Populated, stream: str) -> None:
    check(read(pop.stub, pb.ReadRequest(stream=stream)), pop.model)


def test_all_backwards(pop: Populated) -> None:
    check(read_all(pop.stub, direction=BWD), pop.model[::-1])
    check(read(pop.stub, pb.ReadRequest(stream="", direction=BWD)), pop.model[::-1])


def test_all_from_position_inclusive(pop: Populated) -> None:
    check(read_all(pop.stub, from_position=17), pop.model[16:])
    check(read_all(pop.stub, from_position=1), pop.model)
    check(read_all(pop.stub, from_position=60), pop.model[59:])
    check(read_all(pop.stub, from_position=17, direction=BWD), pop.model[:17][::-1])
    check(read_all(pop.stub, from_position=1, direction=BWD), pop.model[:1])


def test_all_from_position_past_head(pop: Populated) -> None:
    assert read_all(pop.stub, from_position=61) == []
    assert read_all(pop.stub, from_position=1_000_000) == []
    check(read_all(pop.stub, from_position=1_000_000, direction=BWD), pop.model[::-1])


def test_all_max_count(pop: Populated) -> None:
    check(read_all(pop.stub, max_count=7), pop.model[:7])
    check(read_all(pop.stub, max_count=7, direction=BWD), pop.model[::-1][:7])
    check(read_all(pop.stub, max_count=5, from_position=30), pop.model[29:34])
    check(read_all(pop.stub, max_count=5, from_position=30, direction=BWD), pop.model[25:30][::-1])


Pred = Callable[[Rec], bool]

FILTERS: list[tuple[str, dict[str, Any], Pred]] = [
    ("prefix-order", {"stream_prefixes": ["order-"]}, lambda r: r.stream.startswith("order-")),
    ("prefix-order-1", {"stream_prefixes": ["order-1"]}, lambda r: r.stream.startswith("order-1")),
    (
        "prefix-two",
        {"stream_prefixes": ["user-", "inventory:"]},
        lambda r: r.stream.startswith(("user-", "inventory:")),
    ),
    ("type-one", {"event_types": ["Created"]}, lambda r: r.type == "Created"),
    (
        "type-two",
        {"event_types": ["Created", "Deleted"]},
        lambda r: r.type in ("Created", "Deleted"),
    ),
    (
        "prefix-and-type",
        {"stream_prefixes": ["order-"], "event_types": ["Updated"]},
        lambda r: r.stream.startswith("order-") and r.type == "Updated",
    ),
    ("correlation", {"correlation_id": "corr-2"}, lambda r: r.corr == "corr-2"),
    (
        "correlation-and-type",
        {"correlation_id": "corr-4", "event_types": ["Deleted"]},
        lambda r: r.corr == "corr-4" and r.type == "Deleted",
    ),
    (
        "all-three",
        {"stream_prefixes": ["user-"], "event_types": ["Created"], "correlation_id": "corr-1"},
        lambda r: r.stream.startswith("user-") and r.type == "Created" and r.corr == "corr-1",
    ),
    ("no-match-type", {"event_types": ["Nope"]}, lambda r: False),
    ("no-match-prefix", {"stream_prefixes": ["zzz"]}, lambda r: False),
    ("empty-filter", {}, lambda r: True),
]


@pytest.mark.parametrize(("name", "flt", "pred"), FILTERS, ids=[f[0] for f in FILTERS])
@pytest.mark.parametrize("direction", [FWD, BWD], ids=["fwd", "bwd"])
@pytest.mark.parametrize("max_count", [0, 3])
def test_all_filters(
    pop: Populated, name: str, flt: dict[str, Any], pred: Pred, direction: int, max_count: int
) -> None:
    want = [r for r in pop.model if pred(r)]
    if direction == BWD:
        want = want[::-1]
    if max_count:
        want = want[:max_count]
    got = read_all(pop.stub, filter=pb.EventFilter(**flt), direction=direction, max_count=max_count)
    check(got, want)


def test_filter_sanity(pop: Populated) -> None:
    """The data set really exercises the filters (guards the test itself)."""
    for name, _flt, pred in FILTERS:
        n = sum(1 for r in pop.model if pred(r))
        if name.startswith("no-match"):
            assert n == 0
        else:
            assert 0 < n < len(pop.model) or name == "empty-filter", name


def test_all_filter_with_from_position(pop: Populated) -> None:
    want = [r for r in pop.model[20:] if r.type == "Updated"]
    check(
        read_all(pop.stub, from_position=21, filter=pb.EventFilter(event_types=["Updated"])), want
    )
    want = [r for r in pop.model[:40] if r.stream.startswith("order-")][::-1]
    check(
        read_all(
            pop.stub,
            from_position=40,
            direction=BWD,
            filter=pb.EventFilter(stream_prefixes=["order-"]),
        ),
        want,
    )


def test_stream_read_with_type_filter(pop: Populated) -> None:
    want = [r for r in pop.stream("order-1") if r.type == "Updated"]
    assert want
    check(read_stream(pop.stub, "order-1", filter=pb.EventFilter(event_types=["Updated"])), want)


def test_get_event_matches_read(pop: Populated) -> None:
    by_id = {e.event_id: e for e in read_all(pop.stub)}
    for r in pop.model:
        assert get_event(pop.stub, r.event_id) == by_id[r.event_id]


def test_reads_across_many_pages_are_exact(daemon: DaemonProcess) -> None:
    # 40,000 events: a plain read takes 40 pages (1,000 events each), and a
    # filtered one ends pages on a record it skipped (16,000 visited at most).
    stub = daemon.stub()
    n, every = 40_000, 50
    for k in range(n // 1000):
        append(
            stub,
            f"many-{k % 3}",
            [
                new_event("Rare" if (k * 1000 + i) % every == 7 else "Common", b"x")
                for i in range(1000)
            ],
        )
    pages = read_pages(stub, pb.ReadRequest(stream="$all"))
    assert len(pages) >= 40
    assert [e.position for p in pages for e in p.events] == list(range(1, n + 1))
    pages = read_pages(stub, pb.ReadRequest(stream="$all", direction=BWD))
    assert [e.position for p in pages for e in p.events] == list(range(n, 0, -1))
    rare = [p + 1 for p in range(n) if p % every == 7]
    only_rare = pb.EventFilter(event_types=["Rare"])
    pages = read_pages(stub, pb.ReadRequest(stream="$all", filter=only_rare))
    assert len(pages) >= 3
    assert [e.position for p in pages for e in p.events] == rare
    pages = read_pages(stub, pb.ReadRequest(stream="$all", filter=only_rare, direction=BWD))
    assert [e.position for p in pages for e in p.events] == rare[::-1]
    limited = read_pages(stub, pb.ReadRequest(stream="$all", filter=only_rare, max_count=500))
    assert [e.position for p in limited for e in p.events] == rare[:500]
    one = read_pages(stub, pb.ReadRequest(stream="many-1", filter=only_rare))
    assert [e.position for p in one for e in p.events] == [
        p for p in rare if (p - 1) // 1000 % 3 == 1
    ]


def test_read_pages_carry_many_events(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    for _ in range(5):
        append(stub, "paged", [new_event("P", b"x" * 100) for _ in range(200)])
    pages = read_pages(stub, pb.ReadRequest(stream="$all"))
    assert sum(len(p.events) for p in pages) == 1000
    assert len(pages) < 500, f"{len(pages)} pages for 1000 events: not paged"
    assert [e.position for p in pages for e in p.events] == list(range(1, 1001))
    pages = read_pages(stub, pb.ReadRequest(stream="paged", direction=BWD))
    assert [e.revision for p in pages for e in p.events] == list(range(999, -1, -1))


# -- time windows --------------------------------------------------------


@dataclass
class Windowed:
    stub: Any
    a: list[pb.RecordedEvent]
    b: list[pb.RecordedEvent]
    c: list[pb.RecordedEvent]
    t1: int
    t2: int


@pytest.fixture(scope="module")
def windowed(module_daemon_factory: DaemonFactory) -> Windowed:
    d = module_daemon_factory()
    stub = d.stub()
    gap = 0.05
    append(stub, "tw-a", [new_event("A") for _ in range(3)])
    time.sleep(gap)
    t1 = time.time_ns()
    time.sleep(gap)
    append(stub, "tw-b", [new_event("B") for _ in range(2)])
    append(stub, "tw-a", [new_event("B2")])
    time.sleep(gap)
    t2 = time.time_ns()
    time.sleep(gap)
    append(stub, "tw-a", [new_event("C") for _ in range(2)])
    everything = read_all(stub)
    assert len(everything) == 8
    for x, y in itertools.pairwise(everything):
        assert ts_ns(x.recorded_at) <= ts_ns(y.recorded_at)
    return Windowed(stub, everything[:3], everything[3:6], everything[6:], t1, t2)


def test_time_window_client_clock(windowed: Windowed) -> None:
    w = windowed
    # recorded_at comes from the same clock (same machine).
    assert all(ts_ns(e.recorded_at) < w.t1 for e in w.a)
    assert all(w.t1 <= ts_ns(e.recorded_at) < w.t2 for e in w.b)
    assert all(ts_ns(e.recorded_at) >= w.t2 for e in w.c)
    assert read_all(w.stub, from_time=ts(w.t1), to_time=ts(w.t2)) == w.b
    assert read_all(w.stub, from_time=ts(w.t1)) == w.b + w.c
    assert read_all(w.stub, to_time=ts(w.t2)) == w.a + w.b
    assert read_all(w.stub, to_time=ts(w.t1)) == w.a
    assert read_all(w.stub, from_time=ts(w.t2)) == w.c
    assert read_all(w.stub, from_time=ts(w.t1), to_time=ts(w.t2), direction=BWD) == w.b[::-1]


def test_time_window_bounds_are_half_open(windowed: Windowed) -> None:
    w = windowed
    b0 = w.b[0].recorded_at
    c0 = w.c[0].recorded_at
    # [from, to): from is inclusive, to is exclusive.
    assert read_all(w.stub, from_time=b0, to_time=c0) == w.b
    assert read_all(w.stub, to_time=b0) == w.a
    assert read_all(w.stub, from_time=c0) == w.c
    assert read_all(w.stub, from_time=b0, to_time=b0) == []
    later = ts(ts_ns(c0) + 1)
    assert read_all(w.stub, from_time=later) == [
        e for e in w.c if ts_ns(e.recorded_at) >= ts_ns(c0) + 1
    ]


def test_time_window_on_stream_read(windowed: Windowed) -> None:
    w = windowed
    want_b = [e for e in w.b if e.stream == "tw-a"]
    assert len(want_b) == 1
    assert read_stream(w.stub, "tw-a", from_time=ts(w.t1), to_time=ts(w.t2)) == want_b
    assert read_stream(w.stub, "tw-a", from_time=ts(w.t1)) == want_b + w.c
    assert read_stream(w.stub, "tw-a", from_time=ts(w.t2), direction=BWD) == w.c[::-1]
    assert read_stream(w.stub, "tw-b", from_time=ts(w.t2)) == []


def test_time_window_with_filter_and_max_count(windowed: Windowed) -> None:
    w = windowed
    got = read_all(
        w.stub,
        from_time=ts(w.t1),
        filter=pb.EventFilter(stream_prefixes=["tw-a"]),
        max_count=2,
    )
    assert got == ([e for e in w.b + w.c if e.stream == "tw-a"])[:2]
    got = read_all(
        w.stub, to_time=ts(w.t2), filter=pb.EventFilter(event_types=["A"]), direction=BWD
    )
    assert got == w.a[::-1]
    assert ids(read_all(w.stub, from_time=ts(w.t1), from_position=5)) == ids(
        [e for e in w.b + w.c if e.position >= 5]
    )
