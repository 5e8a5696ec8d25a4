"""Contract tests for EventStore implementations (store.py).

Every storage backend subclasses :class:`EventStoreContract` and supplies
``create_store``; the LMDB one runs here on real LMDB files in a temp dir.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import records
from lighthouse_store.config import Durability
from lighthouse_store.errors import (
    Corruption,
    EventIdConflict,
    StorageFull,
    StoreError,
    StreamNotFound,
    WrongExpectedRevision,
)
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import (
    AppendCommand,
    AppendResult,
    EventStore,
    Expected,
    ExpectedKind,
    NewEvent,
    ReadQuery,
)
from lighthouse_store.testing import corrupt_record

ANY = Expected()
NO_STREAM = Expected(ExpectedKind.NO_STREAM)
EXISTS = Expected(ExpectedKind.STREAM_EXISTS)


def exact(revision: int) -> Expected:
    return Expected(ExpectedKind.EXACT, revision)


def event(event_type: str = "T", data: bytes = b"x", **metadata: str) -> NewEvent:
    eid = uuid.uuid4()
    proposed = pb.ProposedEvent(
        event_id=str(eid), event_type=event_type, data=data, metadata=metadata
    ).SerializeToString()
    return NewEvent(eid.bytes, proposed)


def cmd(stream: str, *events: NewEvent, expected: Expected = ANY) -> AppendCommand:
    evs = events or (event(),)
    return AppendCommand.of(stream, expected, evs)


class FakeClock:
    """Pure logic stand-in for the wall clock, so time windows are exact."""

    def __init__(self) -> None:
        self.now = 1_000_000_000_000

    def __call__(self) -> int:
        return self.now


class EventStoreContract:
    clock: FakeClock
    path: Path

    def create_store(self, path: Path, clock: FakeClock) -> EventStore:
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _store(self, tmp_path: Path) -> Iterator[None]:
        self.path = tmp_path
        self.clock = FakeClock()
        self.store = self.create_store(tmp_path, self.clock)
        yield
        self.store.close()

    def reopen(self) -> None:
        self.store.close()
        self.store = self.create_store(self.path, self.clock)

    def commit_ok(self, *commands: AppendCommand) -> list[AppendResult]:
        results = self.store.commit(commands)
        for r in results:
            assert isinstance(r, AppendResult), r
        return results  # type: ignore[return-value]

    def read(self, query: ReadQuery, page: int = 1000) -> list[pb.RecordedEvent]:
        out: list[pb.RecordedEvent] = []
        cursor = None
        for _ in range(100_000):
            p = self.store.read_page(query, cursor, page, 1 << 20)
            out.extend(records.decode(r) for r in p.records)
            if p.cursor is None:
                return out
            cursor = p.cursor
        raise AssertionError("read did not finish")

    # -- appends ----------------------------------------------------------

    def test_positions_and_revisions(self) -> None:
        a, b = self.commit_ok(cmd("s1", event(), event()), cmd("s2", event()))
        assert (a.first_position, a.last_position, a.last_revision) == (1, 2, 1)
        assert (b.first_position, b.last_position, b.last_revision) == (3, 3, 0)
        (c,) = self.commit_ok(cmd("s1", event()))
        assert (c.first_position, c.last_revision) == (4, 2)
        assert self.store.head_position() == 4

    def test_expected_revision_cases(self) -> None:
        self.commit_ok(cmd("s", expected=NO_STREAM))
        self.commit_ok(cmd("s", expected=EXISTS), cmd("s", expected=exact(1)))
        results = self.store.commit(
            [cmd("s", expected=NO_STREAM), cmd("new", expected=EXISTS), cmd("s", expected=exact(0))]
        )
        assert all(isinstance(r, WrongExpectedRevision) for r in results)
        err = results[2]
        assert isinstance(err, WrongExpectedRevision)
        assert err.metadata == {"stream": "s", "expected": "0", "actual": "2"}
        assert isinstance(results[1], StoreError) and results[1].metadata["actual"] == "no_stream"
        assert self.store.head_position() == 3

    def test_an_exact_revision_ahead_of_or_behind_the_stream_is_wrong(self) -> None:
        self.commit_ok(cmd("s", event(), event(), event()))  # revisions 0-2
        ahead, behind, far, unborn = self.store.commit(
            [cmd("s", expected=exact(3)), cmd("s", expected=exact(1)),
             cmd("s", expected=exact(1000)), cmd("new", expected=exact(0))]
        )  # fmt: skip
        for err, expected in ((ahead, "3"), (behind, "1"), (far, "1000")):
            assert isinstance(err, WrongExpectedRevision), err
            assert err.metadata == {"stream": "s", "expected": expected, "actual": "2"}
        assert isinstance(unborn, WrongExpectedRevision), unborn
        assert unborn.metadata == {"stream": "new", "expected": "0", "actual": "no_stream"}
        assert self.store.head_position() == 3
        (ok,) = self.commit_ok(cmd("s", expected=exact(2)))  # the stream's last revision
        assert (ok.first_position, ok.last_revision) == (4, 3)

    def test_a_failed_append_leaves_nothing_and_the_rest_of_the_group_commits(self) -> None:
        results = self.store.commit(
            [cmd("a", event(), event()), cmd("b", event(), expected=exact(5)), cmd("c", event())]
        )
        assert isinstance(results[1], WrongExpectedRevision)
        assert [e.stream for e in self.read(ReadQuery())] == ["a", "a", "c"]
        with pytest.raises(StreamNotFound):
            self.read(ReadQuery(stream="b"))

    def test_appends_in_one_group_see_each_other(self) -> None:
        results = self.store.commit([cmd("s", expected=NO_STREAM), cmd("s", expected=NO_STREAM)])
        assert isinstance(results[0], AppendResult)
        assert isinstance(results[1], WrongExpectedRevision)

    def test_idempotent_retry_returns_the_original_result(self) -> None:
        e1, e2 = event(), event()
        (first,) = self.commit_ok(cmd("s", e1, e2, expected=NO_STREAM))
        self.commit_ok(cmd("s", event()))
        # Same events again, even with a now-stale expected revision.
        again, in_group = self.commit_ok(cmd("s", e1, e2, expected=NO_STREAM), cmd("s", e1, e2))
        assert again == in_group
        assert again.first_position == first.first_position
        assert (again.first_position, again.last_position, again.last_revision) == (1, 2, 1)
        assert again.duplicate
        assert self.store.head_position() == 3

    def test_event_id_reuse_is_rejected(self) -> None:
        e1 = event(data=b"one")
        self.commit_ok(cmd("s", e1))
        other_content = NewEvent(
            e1.event_id,
            pb.ProposedEvent(
                event_id=str(uuid.UUID(bytes=e1.event_id)), event_type="T", data=b"two"
            ).SerializeToString(),
        )
        results = self.store.commit(
            [cmd("s", other_content), cmd("other", e1), cmd("s", e1, event())]
        )
        assert all(isinstance(r, EventIdConflict) for r in results), results
        assert self.store.head_position() == 1

    def test_recorded_at_never_goes_backwards(self) -> None:
        self.commit_ok(cmd("s"))
        self.clock.now -= 10_000
        self.commit_ok(cmd("s"))
        stamps = [records.recorded_at_ns(e) for e in self.read(ReadQuery())]
        assert stamps[1] >= stamps[0]

    def test_reopen_keeps_everything(self) -> None:
        self.commit_ok(cmd("s1", event(), event()), cmd("s2"))
        before = [e.SerializeToString() for e in self.read(ReadQuery())]
        self.reopen()
        assert [e.SerializeToString() for e in self.read(ReadQuery())] == before
        (r,) = self.commit_ok(cmd("s3"))
        assert r.first_position == 4
        assert [e.stream for e in self.read(ReadQuery(stream="s3"))] == ["s3"]

    # -- consumer checkpoints -------------------------------------------------

    def test_an_unknown_consumer_has_no_checkpoint(self) -> None:
        assert self.store.get_checkpoint("nobody") is None
        self.commit_ok(cmd("s"))
        self.store.commit([], {"other": 1})
        assert self.store.get_checkpoint("nobody") is None

    def test_checkpoints_are_stored_per_consumer_and_kept_across_reopen(self) -> None:
        self.commit_ok(cmd("s", event(), event(), event()))
        assert self.store.commit([], {"billing": 0, "audit": 2}) == []
        assert (self.store.get_checkpoint("billing"), self.store.get_checkpoint("audit")) == (0, 2)
        self.reopen()
        assert (self.store.get_checkpoint("billing"), self.store.get_checkpoint("audit")) == (0, 2)

    def test_a_checkpoint_never_moves_backwards(self) -> None:
        self.commit_ok(cmd("s", *[event() for _ in range(10)]))
        self.store.commit([], {"billing": 7})
        self.store.commit([], {"billing": 3})  # e.g. a second subscription of the consumer, behind
        assert self.store.get_checkpoint("billing") == 7
        self.store.commit([], {"billing": 7})
        assert self.store.get_checkpoint("billing") == 7
        self.store.commit([cmd("s")], {"billing": 0})  # riding along with an append
        assert self.store.get_checkpoint("billing") == 7
        self.reopen()
        assert self.store.get_checkpoint("billing") == 7
        self.store.commit([], {"billing": 9})
        assert self.store.get_checkpoint("billing") == 9

    def test_checkpoints_commit_with_the_group_whatever_its_appends_do(self) -> None:
        results = self.store.commit(
            [cmd("s"), cmd("s", expected=NO_STREAM), cmd("t")], {"billing": 1}
        )
        assert [type(r) for r in results] == [AppendResult, WrongExpectedRevision, AppendResult]
        assert self.store.get_checkpoint("billing") == 1
        (failed,) = self.store.commit([cmd("s", expected=exact(9))], {"billing": 2})
        assert isinstance(failed, WrongExpectedRevision)
        assert self.store.get_checkpoint("billing") == 2

    # -- reads --------------------------------------------------------------

    def _fill(self) -> None:
        for i in range(30):
            self.clock.now += 1000
            ev = event("Placed" if i % 2 else "Paid", correlation_id=f"c{i % 5}")
            self.commit_ok(cmd(f"orders-{i % 3}", ev))

    def test_paging_forwards_and_backwards(self) -> None:
        self._fill()
        forwards = self.read(ReadQuery(), page=7)
        assert [e.position for e in forwards] == list(range(1, 31))
        backwards = self.read(ReadQuery(backwards=True), page=4)
        assert [e.position for e in backwards] == list(range(30, 0, -1))
        stream = self.read(ReadQuery(stream="orders-1", start=2), page=3)
        assert [e.revision for e in stream] == list(range(2, 10))
        back = self.read(ReadQuery(stream="orders-1", start=4, backwards=True, max_count=3))
        assert [e.revision for e in back] == [4, 3, 2]

    def test_filters_and_max_count(self) -> None:
        self._fill()
        got = self.read(ReadQuery(stream_prefixes=("orders-2",), event_types=frozenset({"Paid"})))
        assert got and all(e.stream == "orders-2" and e.event_type == "Paid" for e in got)
        assert len(got) == len([i for i in range(30) if i % 3 == 2 and i % 2 == 0])
        corr = self.read(ReadQuery(correlation_id="c3", max_count=2), page=1)
        assert [e.metadata["correlation_id"] for e in corr] == ["c3", "c3"]

    def test_time_window(self) -> None:
        self._fill()
        events = self.read(ReadQuery())
        ts = [records.recorded_at_ns(e) for e in events]
        window = ReadQuery(from_time_ns=ts[9], to_time_ns=ts[20])
        assert [e.position for e in self.read(window)] == list(range(10, 21))
        back = ReadQuery(from_time_ns=ts[9], to_time_ns=ts[20], backwards=True)
        assert [e.position for e in self.read(back)] == list(range(20, 9, -1))
        s = self.read(ReadQuery(stream="orders-0", from_time_ns=ts[9]))
        assert all(e.position >= 10 for e in s) and s[0].position == 10

    def test_empty_results(self) -> None:
        assert self.read(ReadQuery()) == []
        with pytest.raises(StreamNotFound):
            self.read(ReadQuery(stream="nope"))
        self._fill()
        assert self.read(ReadQuery(start=31)) == []
        assert self.read(ReadQuery(from_time_ns=10**30)) == []

    def test_last_position_is_read_from_storage(self) -> None:
        assert self.store.last_position() == 0
        self.commit_ok(cmd("s", event(), event()))
        assert self.store.last_position() == self.store.head_position() == 2

    def test_get_event(self) -> None:
        e1 = event(data=b"find me")
        self.commit_ok(cmd("s", event(), e1))
        rec = self.store.get_event(e1.event_id)
        assert rec is not None and records.decode(rec).data == b"find me"
        assert self.store.get_event(uuid.uuid4().bytes) is None


class TestLmdbEventStore(EventStoreContract):
    def create_store(self, path: Path, clock: FakeClock) -> EventStore:
        return LmdbEventStore(path, map_size=64 << 20, durability=Durability.FSYNC, clock=clock)

    def _corrupt(self, position: int) -> None:
        """Flip one byte of a stored record, underneath the store."""
        self.store.close()
        corrupt_record(self.path, position)
        self.store = self.create_store(self.path, self.clock)

    def test_a_corrupted_record_is_never_returned(self) -> None:
        e2 = event()
        self.commit_ok(cmd("s", event(), e2, event()))
        self._corrupt(2)
        with pytest.raises(Corruption) as info:
            self.read(ReadQuery())
        assert info.value.position == 2
        with pytest.raises(Corruption):
            self.store.get_event(e2.event_id)
        # Others are still readable.
        assert (
            records.decode(
                self.store.read_page(ReadQuery(max_count=1), None, 10, 1 << 20).records[0]
            ).position
            == 1
        )

    def test_map_full_fails_the_group_and_writes_nothing(self, tmp_path: Path) -> None:
        store = LmdbEventStore(
            tmp_path / "small", map_size=256 * 1024, max_map_size=256 * 1024,
            durability=Durability.FSYNC,
        )  # fmt: skip
        try:
            store.commit([cmd("s")])
            big = [event(data=bytes(8000)) for _ in range(100)]
            with pytest.raises(StorageFull):
                store.commit([cmd("s", *big)])
            assert store.head_position() == 1
            (ok,) = store.commit([cmd("s")])
            assert isinstance(ok, AppendResult) and ok.first_position == 2
        finally:
            store.close()

    @pytest.mark.parametrize("durability", list(Durability))
    def test_durability_is_how_lmdb_is_opened(self, tmp_path: Path, durability: Durability) -> None:
        # A kill -9 keeps the page cache, so crash tests pass without any sync:
        # this checks the environment itself (sync: the commit flushes the data
        # pages; never metasync: the store flushes the meta page itself, below),
        # and what the store reports from it.
        store = LmdbEventStore(tmp_path / "d", map_size=1 << 20, durability=durability)
        try:
            flags = store._env.flags()
            durable = durability is Durability.FSYNC
            assert (flags["sync"], flags["metasync"]) == (durable, False)
            assert store.durability is durability
        finally:
            store.close()

    @pytest.mark.parametrize("durability", list(Durability))
    def test_a_commit_returns_after_flushing_its_meta_page(
        self, tmp_path: Path, durability: Durability
    ) -> None:
        # In fsync durability the commit's own flush covers only the data pages
        # (metasync off): commit() must flush the file once more after the
        # transaction, before it returns (and so before anyone is answered).
        store = LmdbEventStore(tmp_path / "d", map_size=1 << 20, durability=durability)
        flushed: list[int] = []  # the last committed transaction at each flush

        class Env:
            def __init__(self, env: Any) -> None:
                self._env = env

            def __getattr__(self, name: str) -> Any:
                return getattr(self._env, name)

            def sync(self, force: bool = False) -> None:
                assert force
                flushed.append(self._env.info()["last_txnid"])
                self._env.sync(force)

        real, store._env = store._env, Env(store._env)
        try:
            store.commit([cmd("s")])
            store.commit([cmd("s"), cmd("t")], {"c": 1})
            txnid = real.info()["last_txnid"]
            assert flushed == ([txnid - 1, txnid] if durability is Durability.FSYNC else [])
        finally:
            store._env = real
            store.close()

    def test_an_append_too_big_for_the_map_fails_alone(self, tmp_path: Path) -> None:
        store = LmdbEventStore(
            tmp_path / "small", map_size=256 * 1024, max_map_size=256 * 1024,
            durability=Durability.FSYNC,
        )  # fmt: skip
        try:
            big = [event(data=bytes(8000)) for _ in range(100)]
            small, after = cmd("s"), cmd("t")
            results = store.commit([small, cmd("s", *big), after], {"billing": 0})
            assert [type(r) for r in results] == [AppendResult, StorageFull, AppendResult]
            ok1, _, ok2 = results
            assert isinstance(ok1, AppendResult) and isinstance(ok2, AppendResult)
            assert (ok1.first_position, ok2.first_position) == (1, 2)  # no gap
            assert store.head_position() == 2
            assert store.get_checkpoint("billing") == 0  # went with the first that fit
            # Nothing fits: nothing is written, and the group fails whole.
            with pytest.raises(StorageFull):
                store.commit([cmd("s", *big), cmd("s", *big)], {"billing": 2})
            assert store.head_position() == 2 and store.get_checkpoint("billing") == 0
        finally:
            store.close()

    def test_a_zero_tail_budget_keeps_nothing_in_memory(self, tmp_path: Path) -> None:
        store = LmdbEventStore(
            tmp_path / "tail0", map_size=64 << 20, durability=Durability.ASYNC, tail_bytes=0
        )
        try:
            assert store.tail_bytes == 0
            store.commit([cmd("s", *[event() for _ in range(10)])])
            assert store._tail.held_bytes() == 0
            page = store.read_page(ReadQuery(), None, 1000, 1 << 30)
            assert [records.decode(r).position for r in page.records] == list(range(1, 11))
        finally:
            store.close()

    def test_the_in_memory_tail_stays_bounded_and_reads_fall_back_to_disk(
        self, tmp_path: Path
    ) -> None:
        store = LmdbEventStore(
            tmp_path / "tail", map_size=64 << 20, durability=Durability.ASYNC, tail_bytes=20_000
        )
        try:
            for _ in range(50):
                store.commit([cmd("s", *[event(data=bytes(300)) for _ in range(10)])])
            assert store.tail_bytes == 20_000
            tail = store._tail
            group_bytes = 10 * len(tail.get(500) or b"")
            assert 10_000 <= tail.held_bytes() <= 20_000 + group_bytes  # see tail.Tail
            held = [p for p in range(1, 501) if tail.get(p) is not None]
            assert held == list(range(held[0], 501)) and held[0] > 1  # contiguous, newest
            page = store.read_page(ReadQuery(), None, 1000, 1 << 30)
            assert [records.decode(r).position for r in page.records] == list(range(1, 501))
        finally:
            store.close()
