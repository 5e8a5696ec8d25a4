"""The store contract across processes: two LmdbEventStores in two processes
on one LMDB environment, as ``--workers 2`` runs them. Each check of a
commit (positions, stream ids, expected revision, idempotency, recorded_at,
checkpoints) must see what the other process committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from store_process import StoreProcess
from test_store_contract import NO_STREAM, cmd, event, exact

from lighthouse_store import records
from lighthouse_store.config import Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendResult, ReadQuery

HOUR_NS = 3600 * 10**9


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[StoreProcess, StoreProcess]]:
    # ``ahead``'s clock runs an hour fast: what ``behind`` stamps after it
    # must still not go back in time.
    ahead = StoreProcess(tmp_path, clock_offset_ns=HOUR_NS)
    behind = StoreProcess(tmp_path)
    try:
        # Both have opened the store (and seen it empty) before a test begins.
        assert ahead.call("head_position") == behind.call("head_position") == 0
        yield ahead, behind
    finally:
        ahead.close()
        behind.close()


def read_back(path: Path, query: ReadQuery) -> list[tuple[str, int, int, int]]:
    """(stream, revision, position, recorded_at) of every event, read in this process."""
    store = LmdbEventStore(path, map_size=256 << 20, durability=Durability.ASYNC)
    try:
        page = store.read_page(query, None, 10_000, 1 << 30)
        assert page.cursor is None
        return [
            (e.stream, e.revision, e.position, records.recorded_at_ns(e))
            for e in map(records.decode, page.records)
        ]
    finally:
        store.close()


def result(first: int, last: int, revision: int, duplicate: bool = False) -> AppendResult:
    return AppendResult(first, last, revision, duplicate)


def test_each_process_continues_where_the_other_left_off(
    tmp_path: Path, two: tuple[StoreProcess, StoreProcess]
) -> None:
    a, b = two
    e1, e2 = event(), event()
    assert a.commit([cmd("s", e1, e2, expected=NO_STREAM)]) == [result(1, 2, 1)]
    # b opened the store when it was empty: its next position and its next
    # stream id must come from the disk, not from what it saw at open.
    assert b.commit([cmd("t", expected=NO_STREAM)]) == [result(3, 3, 0)]
    assert a.commit([cmd("s", expected=exact(1)), cmd("t", expected=exact(0))]) == [
        result(4, 4, 2),
        result(5, 5, 1),
    ]
    # Idempotency and the expected revision are checked against a's commits.
    assert b.commit([cmd("s", e1, e2, expected=NO_STREAM)]) == [result(1, 2, 1, True)]
    (conflict,) = b.commit([cmd("t", e1)])
    assert conflict[0] == "EventIdConflict"
    (wrong,) = b.commit([cmd("s", expected=exact(1))])
    assert wrong == ("WrongExpectedRevision", {"stream": "s", "expected": "1", "actual": "2"})
    assert b.commit([cmd("u", expected=NO_STREAM)]) == [result(6, 6, 0)]

    everything = read_back(tmp_path, ReadQuery())
    assert [(s, r, p) for s, r, p, _ in everything] == [
        ("s", 0, 1), ("s", 1, 2), ("t", 0, 3), ("s", 2, 4), ("t", 1, 5), ("u", 0, 6)
    ]  # fmt: skip
    stamps = [ts for *_, ts in everything]
    assert stamps == sorted(stamps), "recorded_at went back where b committed after a"
    # Each stream got its own id: a stream's read finds only its own events.
    for stream, positions in (("s", [1, 2, 4]), ("t", [3, 5]), ("u", [6])):
        assert [p for _, _, p, _ in read_back(tmp_path, ReadQuery(stream=stream))] == positions


def test_a_process_hears_of_the_other_ones_head(two: tuple[StoreProcess, StoreProcess]) -> None:
    a, b = two
    a.commit([cmd("s", event(), event(), event())])
    assert b.call("head_position") == 0  # nothing told it yet
    assert b.call("observe_head") == 3
    assert b.call("head_position") == 3
    assert b.call("last_position") == 3


def test_a_checkpoint_never_moves_back_across_processes(
    two: tuple[StoreProcess, StoreProcess],
) -> None:
    a, b = two
    a.commit([], {"billing": 10})
    b.commit([], {"billing": 5})
    assert a.call("get_checkpoint", "billing") == b.call("get_checkpoint", "billing") == 10
    b.commit([], {"billing": 12})
    assert a.call("get_checkpoint", "billing") == 12


def test_two_processes_racing_on_one_stream_write_each_revision_once(
    tmp_path: Path, two: tuple[StoreProcess, StoreProcess]
) -> None:
    a, b = two
    n = 150
    a.send("race", "raced", n)  # both at once: LMDB's write lock orders them
    b.send("race", "raced", n)
    won = a.receive(timeout=120) + b.receive(timeout=120)
    assert sorted(r.last_revision for r in won) == list(range(2 * n))
    assert sorted(r.first_position for r in won) == list(range(1, 2 * n + 1))
    stream = read_back(tmp_path, ReadQuery(stream="raced"))
    assert [(r, p) for _, r, p, _ in stream] == [(i, i + 1) for i in range(2 * n)]
    stamps = [ts for *_, ts in stream]
    assert stamps == sorted(stamps)


def test_the_reader_check_frees_the_slot_of_a_killed_process(tmp_path: Path) -> None:
    # What the supervisor does after a worker dies: a read transaction the
    # worker had open would otherwise keep its reader slot (and pin the
    # pages it reads) for as long as the environment is open.
    supervisor = LmdbEventStore(
        tmp_path, map_size=256 << 20, durability=Durability.ASYNC, shared=True
    )
    try:
        worker = StoreProcess(tmp_path)
        try:
            assert worker.call("hold_read") is True
            worker.kill()
        finally:
            worker.close()
        assert supervisor.reader_check() == 1
        assert supervisor.reader_check() == 0
    finally:
        supervisor.close()


def test_a_process_killed_holding_the_write_lock_does_not_block_the_others(
    tmp_path: Path,
) -> None:
    # A worker killed in the middle of a commit: LMDB's write lock is a
    # robust mutex, which the next writer takes over; the dead transaction
    # left nothing. (Without the kill, the commit below waits for ever: the
    # bounded wait is what makes this test fail then.)
    a, b = StoreProcess(tmp_path), StoreProcess(tmp_path)
    try:
        assert a.call("head_position") == b.call("head_position") == 0
        assert a.call("hold_write") is True
        a.kill()
        b.send("commit", [cmd("s")], {})
        assert b.answered(timeout=30), "the write lock of a killed process was never freed"
        assert b.receive() == [result(1, 1, 0)]
    finally:
        a.close()
        b.close()
    store = LmdbEventStore(tmp_path, map_size=256 << 20, durability=Durability.ASYNC)
    try:
        with store._env.begin() as txn:
            assert txn.get(b"half-done", db=store._dbs.meta) is None
    finally:
        store.close()
