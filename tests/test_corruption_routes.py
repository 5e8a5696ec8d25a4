"""Every route to a corrupt record, over real gRPC (``lmdb_reads.py``, "A corrupt record").

One daemon on a store of nine events, two of them damaged before it starts:

==========  ======  ========  ====  ==========================================
position    stream  revision  type  damage
==========  ======  ========  ====  ==========================================
1           alpha   0         A
2           beta    0         B
3           alpha   1         A
4           beta    1         B
5           alpha   2         A     a length byte flipped: the bytes no longer parse
6           gamma   0         C
7           alpha   3         A
8           beta    2         B     a data byte flipped: parses, checksum fails
9           gamma   1         C
==========  ======  ========  ====  ==========================================

Position 5 is also the first probe of a time window's binary search over
``$all`` (and revision 2 over ``alpha``). Each route answers the same way:
every good record before the damage is delivered, a read that reaches a
damaged record fails with ``DATA_LOSS`` naming its position (no traceback,
no path), and a read that does not reach it works."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest
from subscriber import Subscriber
from support import (
    DaemonFactory,
    append,
    assert_clean_message,
    error_info,
    get_event,
    new_event,
    read_all,
    rpc_error,
    ts,
    ts_ns,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_format
from lighthouse_store.testing import DaemonProcess

LAYOUT = [
    ("alpha", "A"), ("beta", "B"), ("alpha", "A"), ("beta", "B"), ("alpha", "A"),
    ("gamma", "C"), ("alpha", "A"), ("beta", "B"), ("gamma", "C"),
]  # fmt: skip
UNPARSEABLE, BAD_DATA = 5, 8


@dataclass
class Store:
    daemon: DaemonProcess
    stub: Any
    events: list[pb.RecordedEvent]  # as written, by position - 1

    def at(self, position: int) -> pb.RecordedEvent:
        return self.events[position - 1]

    def time(self, position: int) -> int:
        return ts_ns(self.at(position).recorded_at)


@pytest.fixture(scope="module")
def store(module_daemon_factory: DaemonFactory) -> Iterator[Store]:
    daemon = module_daemon_factory()
    stub = daemon.stub()
    for stream, kind in LAYOUT:  # one append each: nine commits, nine times
        append(stub, stream, new_event(kind, b"x" * 100))
    written = read_all(stub)
    assert daemon.stop() == 0
    daemon.corrupt_record(UNPARSEABLE, at=1)  # the event id's length: a varint that runs on
    daemon.corrupt_record(BAD_DATA)  # the middle byte: in the data
    assert not _parses(daemon.data_dir, UNPARSEABLE) and _parses(daemon.data_dir, BAD_DATA)
    daemon.start()
    yield Store(daemon, daemon.stub(), written)


def _parses(data_dir: Path, position: int) -> bool:
    env = lmdb.open(str(lmdb_format.env_path(data_dir)), readonly=True, max_dbs=8)
    try:
        with env.begin() as txn:
            raw = txn.get(lmdb_format.U64.pack(position), db=env.open_db(b"log", txn=txn))
        try:
            pb.RecordedEvent.FromString(bytes(raw or b""))
        except Exception:
            return False
        return True
    finally:
        env.close()


def _written(got: Iterable[pb.RecordedEvent]) -> list[pb.RecordedEvent]:
    """The events the test wrote: not the degradation level's events, which
    the daemon appends to ``$system`` once it finds the corruption."""
    return [e for e in got if e.stream != "$system"]


def _partial(call: Any) -> tuple[list[pb.RecordedEvent], grpc.RpcError | None]:
    """The events a streaming call delivered, and the error it ended with."""
    got: list[pb.RecordedEvent] = []
    try:
        for page in call:
            got.extend(page.events)
    except grpc.RpcError as err:
        return got, err
    return got, None


def _read(s: Store, **kwargs: Any) -> tuple[list[int], grpc.RpcError | None]:
    got, err = _partial(s.stub.Read(pb.ReadRequest(**kwargs), timeout=30))
    got = _written(got)
    for event in got:
        assert event == s.at(event.position)  # every field, the checksum included
    return [e.position for e in got], err


def _assert_data_loss(err: grpc.RpcError | None, position: int, s: Store) -> None:
    assert err is not None, "the read did not fail"
    assert err.code() == grpc.StatusCode.DATA_LOSS, (err.code(), err.details())
    info = error_info(err)
    assert (info.reason, info.metadata["failure_class"]) == ("CORRUPTION", "restart_required")
    assert info.metadata["position"] == str(position), info
    assert f"position {position}" in (err.details() or "")
    assert_clean_message(err, s.daemon.data_dir)


BACKWARDS = pb.DIRECTION_BACKWARDS


def test_stream_reads(store: Store) -> None:
    got, err = _read(store, stream="alpha")
    assert got == [1, 3]  # delivered before the failure, not lost with its page
    _assert_data_loss(err, UNPARSEABLE, store)
    assert _read(store, stream="alpha", from_revision=3) == ([7], None)
    got, err = _read(store, stream="alpha", direction=BACKWARDS)
    assert got == [7]
    _assert_data_loss(err, UNPARSEABLE, store)
    got, err = _read(store, stream="beta")
    assert got == [2, 4]
    _assert_data_loss(err, BAD_DATA, store)
    assert _read(store, stream="gamma") == ([6, 9], None)


def test_all_reads(store: Store) -> None:
    got, err = _read(store, stream="$all")
    assert got == [1, 2, 3, 4]
    _assert_data_loss(err, UNPARSEABLE, store)
    assert _read(store, stream="$all", from_position=6, max_count=2) == ([6, 7], None)
    assert _read(store, stream="$all", direction=BACKWARDS, from_position=9, max_count=1) == (
        [9], None
    )  # fmt: skip
    assert _read(store, stream="$all", max_count=4) == ([1, 2, 3, 4], None)


def test_time_windows(store: Store) -> None:
    """A window's bounds are found around damaged records (the binary search
    probes position 5 first), never through them: before, that probe parsed
    the damaged bytes and the read failed with INTERNAL."""
    window = {"from_time": ts(store.time(1)), "to_time": ts(store.time(3))}
    assert _read(store, stream="$all", **window) == ([1, 2], None)
    assert _read(store, stream="alpha", **window) == ([1], None)
    late = {"from_time": ts(store.time(6) + 1), "to_time": ts(store.time(7) + 1)}
    got, err = _read(store, stream="$all", **late)
    # Position 8's time is unknown and may be before the window's end: the
    # read reaches it, after delivering 7.
    assert got == [7]
    _assert_data_loss(err, BAD_DATA, store)
    got, err = _read(store, stream="$all", from_time=ts(store.time(4)))
    assert got == [4]
    _assert_data_loss(err, UNPARSEABLE, store)


def test_filters(store: Store) -> None:
    """A filter cannot know the type of a record it cannot read: a filtered
    read that reaches one fails, unless the indexes vouch for its stream and
    the filter is on streams that exclude it (position 8, in beta)."""
    gamma = pb.EventFilter(stream_prefixes=["gam"])
    got, err = _read(store, stream="$all", filter=gamma)  # position 5: its stream is unknown
    assert got == []
    _assert_data_loss(err, UNPARSEABLE, store)
    assert _read(store, stream="$all", from_position=6, filter=gamma) == ([6, 9], None)
    named = pb.EventFilter(streams=["gamma", "alpha"])
    assert _read(store, stream="$all", from_position=6, filter=named) == ([6, 7, 9], None)
    for unknowable in (pb.EventFilter(event_types=["C"]), pb.EventFilter(streams=["beta"])):
        got, err = _read(store, stream="$all", from_position=6, filter=unknowable)
        assert got == ([6] if unknowable.event_types else [])
        _assert_data_loss(err, BAD_DATA, store)


def test_get_event(store: Store) -> None:
    for position in (UNPARSEABLE, BAD_DATA):
        err = rpc_error(
            store.stub.GetEvent, pb.GetEventRequest(event_id=store.at(position).event_id)
        )
        _assert_data_loss(err, position, store)
    for position in (4, 6, 9):
        assert get_event(store.stub, store.at(position).event_id) == store.at(position)


def _subscription(s: Store, **options: Any) -> tuple[list[int], Subscriber]:
    """The positions a subscription delivers until it ends or is caught up."""
    sub = Subscriber(s.stub, pb.SubscribeOptions(**options))
    got: list[int] = []
    while (msg := sub.next()) is not None:
        kind = msg.WhichOneof("kind")
        if kind == "events":
            for event in _written(msg.events.events):
                assert event == s.at(event.position)
                got.append(event.position)
        elif kind == "caught_up_position":
            break
    return got, sub


def test_subscriptions(store: Store) -> None:
    got, sub = _subscription(store, from_start={})
    assert got == [1, 2, 3, 4]
    _assert_data_loss(sub.error, UNPARSEABLE, store)
    got, sub = _subscription(store, after_position=BAD_DATA)
    assert (got, sub.error) == ([9], None)
    sub.close()
    gamma = pb.EventFilter(stream_prefixes=["gam"])
    got, sub = _subscription(store, after_position=UNPARSEABLE, filter=gamma)
    assert (got, sub.error) == ([6, 9], None)
    sub.close()
    got, sub = _subscription(store, after_position=UNPARSEABLE, filter=pb.EventFilter(
        event_types=["C"]))  # fmt: skip
    assert got == [6]
    _assert_data_loss(sub.error, BAD_DATA, store)


def damage_pages(data_dir: Path, needle: bytes) -> int:
    """Overwrite the page flags of every page of ``data.mdb`` that holds
    ``needle`` (its live copy and any stale one), so LMDB finds a page that
    is neither a branch nor a leaf where it expects one (MDB_CORRUPTED).
    Returns how many pages."""
    path = lmdb_format.data_file(data_dir)
    data = bytearray(path.read_bytes())
    page_size, damaged = 4096, 0
    for start in range(2 * page_size, len(data), page_size):  # past the meta pages
        if needle in data[start : start + page_size]:
            data[start + 10 : start + 12] = b"\x00\x00"
            damaged += 1
    path.write_bytes(bytes(data))
    return damaged


def test_damaged_btree_pages_are_data_loss(daemon_factory: DaemonFactory) -> None:
    """LMDB's own MDB_CORRUPTED is DATA_LOSS, without a traceback (it was a raw
    lmdb.CorruptedError, INTERNAL); the pages it does not reach still serve."""
    daemon = daemon_factory()
    stub = daemon.stub()
    for i in range(40):
        append(stub, f"s-{i % 3}", [new_event("T", b"%04d" % i * 60) for _ in range(50)])
    written = read_all(stub)
    assert daemon.stop() == 0
    victim = written[100]
    assert damage_pages(daemon.data_dir, victim.event_id.encode()) >= 1
    daemon.start()
    stub = daemon.stub()
    for err in (
        _partial(stub.Read(pb.ReadRequest(stream="$all"), timeout=30))[1],
        rpc_error(stub.GetEvent, pb.GetEventRequest(event_id=victim.event_id)),
        _partial(stub.Read(pb.ReadRequest(stream=victim.stream), timeout=30))[1],
    ):
        assert err is not None and err.code() == grpc.StatusCode.DATA_LOSS, err
        info = error_info(err)
        assert (info.reason, info.metadata["failure_class"]) == ("CORRUPTION", "restart_required")
        assert "damaged" in (err.details() or "")
        assert_clean_message(err, daemon.data_dir)
    late = read_all(stub, from_position=1500)
    assert late == written[1499:]
    assert "Traceback" not in daemon.log_text()


def test_get_event_through_an_index_entry_pointing_at_another_event(
    daemon_factory: DaemonFactory,
) -> None:
    """The event id index names a position whose record is sound but is
    another event: DATA_LOSS, never the other event (it was served as the
    one asked for)."""
    daemon = daemon_factory()
    stub = daemon.stub()
    append(stub, "s", [new_event("T", b"%d" % i) for i in range(3)])
    written = read_all(stub)
    assert daemon.stop() == 0
    env = lmdb.open(str(lmdb_format.env_path(daemon.data_dir)), max_dbs=8, create=False)
    try:
        with env.begin(write=True) as txn:
            ids = env.open_db(b"event_ids", txn=txn, create=False)
            key = next(k for k, v in txn.cursor(db=ids) if v == lmdb_format.U64.pack(1))
            txn.put(key, lmdb_format.U64.pack(2), db=ids)
    finally:
        env.close()
    daemon.start()
    stub = daemon.stub()
    err = rpc_error(stub.GetEvent, pb.GetEventRequest(event_id=written[0].event_id))
    assert err.code() == grpc.StatusCode.DATA_LOSS, (err.code(), err.details())
    assert error_info(err).metadata["position"] == "2"
    assert get_event(stub, written[1].event_id) == written[1]
