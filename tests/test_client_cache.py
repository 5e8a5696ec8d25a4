"""The degraded-mode read cache (_cache.py): memory LRU plus real LMDB files in tmp_path."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from lighthouse_client._cache import ReadCache
from lighthouse_client._types import Filter, RecordedEvent


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ev(
    position: int,
    stream: str = "orders-1",
    revision: int | None = None,
    *,
    event_type: str = "OrderPlaced",
    data: bytes = b"{}",
    metadata: Mapping[str, str] | None = None,
    event_id: str | None = None,
) -> RecordedEvent:
    return RecordedEvent(
        event_id=event_id or f"00000000-0000-7000-8000-{position:012d}",
        event_type=event_type,
        data=data,
        content_type="application/json",
        metadata=dict(metadata or {}),
        stream=stream,
        revision=position - 1 if revision is None else revision,
        position=position,
        recorded_at_ns=1_795_000_000_000_000_000 + position * 1_000_123,
        checksum=0xDEADBEEF ^ position,
    )


def check_invariants(cache: ReadCache) -> None:
    """The memory tier's indexes match its entries exactly, and the byte count adds up."""
    mem = cache._mem
    assert cache._ids == {e.event.event_id: p for p, e in mem.items()}
    revs: dict[str, dict[int, int]] = {}
    for p, e in mem.items():
        revs.setdefault(e.event.stream, {})[e.event.revision] = p
    assert cache._revs == revs
    assert cache.memory_bytes == sum(e.size for e in mem.values())
    assert cache.memory_bytes <= cache._max_bytes


def one_size(event: RecordedEvent) -> int:
    probe = ReadCache()
    probe.put([event])
    return probe.memory_bytes


def positions(answer: tuple[list[RecordedEvent], float] | None) -> list[int] | None:
    return None if answer is None else [e.position for e in answer[0]]


def revisions(answer: tuple[list[RecordedEvent], float] | None) -> list[int] | None:
    return None if answer is None else [e.revision for e in answer[0]]


# -- memory tier: LRU by bytes ------------------------------------------------


def test_lru_evicts_the_least_recently_used_and_stays_under_max_bytes() -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=3 * size)
    cache.put([ev(1), ev(2), ev(3)])
    assert cache.memory_bytes == 3 * size
    assert cache.get_event(ev(1).event_id) is not None  # 1 is now the most recent
    cache.put([ev(4)])
    assert cache.get_event(ev(2).event_id) is None
    for p in (1, 3, 4):
        assert cache.get_event(ev(p).event_id) is not None
    assert cache.memory_bytes == 3 * size
    check_invariants(cache)


def test_a_read_run_counts_as_use() -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=3 * size)
    cache.put([ev(1), ev(2), ev(3)])
    assert revisions(cache.read_stream("orders-1", 0, False, 1)) == [0]  # touches position 1
    cache.put([ev(4)])
    assert cache.get_event(ev(1).event_id) is not None
    assert cache.get_event(ev(2).event_id) is None


def test_bytes_stay_bounded_and_indexes_consistent_under_churn() -> None:
    cache = ReadCache(max_bytes=20_000)
    for p in range(1, 400):
        meta = {"correlation_id": f"c-{p}"} if p % 3 else {}
        cache.put([ev(p, stream=f"s-{p % 7}", revision=p // 7, data=b"x" * (p * 37 % 900))])
        if p % 5 == 0:
            cache.put([ev(p // 2, stream=f"s-{p // 2 % 7}", revision=p // 2 // 7, metadata=meta)])
        check_invariants(cache)
    assert 0 < len(cache._mem) < 399


def test_evicted_events_leave_no_index_behind() -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=2 * size)
    cache.put([ev(1), ev(2), ev(3)])
    assert cache.get_event(ev(1).event_id) is None
    assert cache.read_stream("orders-1", 0, False, 0) is None
    assert revisions(cache.read_stream("orders-1", 1, False, 0)) == [1, 2]
    check_invariants(cache)


def test_an_event_bigger_than_the_cache_is_not_kept_in_memory() -> None:
    cache = ReadCache(max_bytes=1000)
    cache.put([ev(1), ev(2, data=b"x" * 5000)])
    assert cache.get_event(ev(2).event_id) is None
    assert cache.get_event(ev(1).event_id) is not None
    check_invariants(cache)


def test_put_is_idempotent_per_position_and_refreshes_fetched_at() -> None:
    clock = Clock()
    cache = ReadCache(clock=clock)
    cache.put([ev(1), ev(2)])
    before = cache.memory_bytes
    clock.now += 30
    cache.put([ev(2)])
    assert cache.memory_bytes == before
    hit = cache.get_event(ev(2).event_id)
    assert hit is not None and hit[1] == clock.now
    check_invariants(cache)


def test_an_event_that_contradicts_a_cached_one_replaces_it() -> None:
    cache = ReadCache()
    cache.put([ev(5, event_id="aaaaaaaa-0000-7000-8000-000000000000")])
    cache.put([ev(5, event_id="bbbbbbbb-0000-7000-8000-000000000000")])  # store was replaced
    assert cache.get_event("aaaaaaaa-0000-7000-8000-000000000000") is None
    assert cache.get_event("bbbbbbbb-0000-7000-8000-000000000000") is not None
    cache.put([ev(9, revision=4)])  # orders-1@4 now lives at position 9
    assert cache.get_event(ev(5).event_id) is None
    assert positions(cache.read_stream("orders-1", 4, False, 0)) == [9]
    check_invariants(cache)


# -- read_stream: the contiguous run -----------------------------------------


@pytest.fixture
def gappy() -> ReadCache:
    """orders-1 revisions 0..9 except 5; another stream interleaved."""
    cache = ReadCache()
    cache.put([ev(r + 1, revision=r) for r in range(10) if r != 5])
    cache.put([ev(100 + r, stream="other", revision=r) for r in range(3)])
    return cache


def test_read_stream_forwards_stops_at_a_gap(gappy: ReadCache) -> None:
    assert revisions(gappy.read_stream("orders-1", None, False, 0)) == [0, 1, 2, 3, 4]
    assert revisions(gappy.read_stream("orders-1", 6, False, 0)) == [6, 7, 8, 9]
    assert revisions(gappy.read_stream("other", None, False, 0)) == [0, 1, 2]


def test_read_stream_missing_start_is_none(gappy: ReadCache) -> None:
    assert gappy.read_stream("orders-1", 5, False, 0) is None
    assert gappy.read_stream("orders-1", 10, False, 0) is None
    assert gappy.read_stream("nope", None, False, 0) is None
    assert gappy.read_stream("nope", None, True, 0) is None


def test_read_stream_backwards(gappy: ReadCache) -> None:
    assert revisions(gappy.read_stream("orders-1", None, True, 0)) == [9, 8, 7, 6]
    assert revisions(gappy.read_stream("orders-1", 4, True, 0)) == [4, 3, 2, 1, 0]
    assert revisions(gappy.read_stream("orders-1", 5, True, 0)) is None


def test_read_stream_max_count(gappy: ReadCache) -> None:
    assert revisions(gappy.read_stream("orders-1", None, False, 2)) == [0, 1]
    assert revisions(gappy.read_stream("orders-1", 8, True, 3)) == [8, 7, 6]
    assert revisions(gappy.read_stream("orders-1", 3, False, 100)) == [3, 4]


# -- read_all: positions, filter ----------------------------------------------


def test_read_all_runs_over_positions() -> None:
    cache = ReadCache()
    cache.put([ev(p, stream=f"s-{p % 2}", revision=p // 2) for p in range(1, 11) if p != 7])
    assert positions(cache.read_all(None, False, 0, None)) == [1, 2, 3, 4, 5, 6]
    assert positions(cache.read_all(None, True, 0, None)) == [10, 9, 8]
    assert positions(cache.read_all(5, True, 2, None)) == [5, 4]
    assert positions(cache.read_all(8, False, 0, None)) == [8, 9, 10]
    assert cache.read_all(7, False, 0, None) is None
    assert cache.read_all(11, False, 0, None) is None
    assert ReadCache().read_all(None, True, 0, None) is None
    assert ReadCache().read_all(None, False, 0, None) is None


def test_read_all_applies_the_filter_and_max_count_counts_matches() -> None:
    cache = ReadCache()
    kinds = ["A", "B", "B", "A", "B", "A", "A"]
    cache.put(
        [
            ev(p, stream="orders-1" if p % 2 else "users-1", revision=p, event_type=k)
            for p, k in enumerate(kinds, start=1)
        ]
    )
    only_a = Filter(event_types=("A",))
    assert positions(cache.read_all(None, False, 0, only_a)) == [1, 4, 6, 7]
    assert positions(cache.read_all(None, False, 2, only_a)) == [1, 4]
    assert positions(cache.read_all(None, True, 3, only_a)) == [7, 6, 4]
    users = Filter(stream_prefixes=("users-",))
    assert positions(cache.read_all(2, False, 0, users)) == [2, 4, 6]
    # A valid run with nothing matching is an empty answer, not a miss.
    answer = cache.read_all(2, False, 0, Filter(event_types=("C",)))
    assert answer is not None and answer[0] == []


def test_read_all_applies_the_time_window_before_max_count() -> None:
    cache = ReadCache()
    cache.put([ev(p, event_type="A" if p % 2 else "B") for p in range(1, 11)])

    def at(position: int) -> int:
        return ev(position).recorded_at_ns

    # [at(4), at(8)) holds positions 4-7; max_count counts only those.
    assert positions(cache.read_all(None, False, 2, None, from_ns=at(4))) == [4, 5]
    window = cache.read_all(None, False, 0, None, from_ns=at(4), to_ns=at(8))
    assert positions(window) == [4, 5, 6, 7]
    assert positions(cache.read_all(None, True, 2, None, to_ns=at(8))) == [7, 6]
    assert positions(cache.read_all(2, False, 3, None, from_ns=at(4) - 1)) == [4, 5, 6]
    only_a = Filter(event_types=("A",))
    assert positions(cache.read_all(None, False, 1, only_a, from_ns=at(4))) == [5]
    assert positions(cache.read_all(None, True, 0, only_a, to_ns=at(8))) == [7, 5, 3, 1]
    # A valid run with nothing in the window is an empty answer, not a miss.
    answer = cache.read_all(None, False, 5, None, from_ns=at(10) + 1)
    assert answer is not None and answer[0] == []


# -- staleness -----------------------------------------------------------------


def test_fetched_at_is_the_oldest_of_the_answer() -> None:
    clock = Clock(1000.0)
    cache = ReadCache(clock=clock)
    cache.put([ev(1), ev(2)])
    clock.now = 900.0  # clocks can step back; the oldest still wins
    cache.put([ev(3)])
    clock.now = 1200.0
    cache.put([ev(4)])
    assert cache.read_stream("orders-1", None, False, 0) == (
        [ev(1), ev(2), ev(3), ev(4)],
        900.0,
    )
    assert cache.read_stream("orders-1", 0, False, 2) == ([ev(1), ev(2)], 1000.0)
    assert cache.read_all(4, True, 1, None) == ([ev(4)], 1200.0)
    assert cache.get_event(ev(3).event_id) == (ev(3), 900.0)


def test_a_filtered_answer_is_as_stale_as_the_run_it_rests_on() -> None:
    clock = Clock(500.0)
    cache = ReadCache(clock=clock)
    cache.put([ev(1, event_type="Skip")])
    clock.now = 800.0
    cache.put([ev(2, event_type="Keep")])
    answer = cache.read_all(None, False, 0, Filter(event_types=("Keep",)))
    assert answer == ([ev(2, event_type="Keep")], 500.0)
    assert cache.read_all(None, False, 0, Filter(event_types=("None",))) == ([], 500.0)


# -- disk tier -------------------------------------------------------------------


def test_disk_cache_survives_a_restart_with_every_field(tmp_path: Path) -> None:
    clock = Clock(1234.5)
    path = tmp_path / "cache"
    events = [
        ev(1, data=b"\x00\xff binary", metadata={"correlation_id": "c-1", "k": "v\u00e9"}),
        ev(2, stream="other", revision=0, event_type="UserJoined", data=b""),
        ev(3, revision=1),
    ]
    cache = ReadCache(path=path, clock=clock)
    cache.put(events)
    cache.note_head(3)
    cache.note_head(42)
    cache.close()

    reopened = ReadCache(path=path, clock=Clock(9999.0))
    try:
        assert reopened.head_position == 42
        assert reopened.get_event(events[0].event_id) == (events[0], 1234.5)
        assert reopened.get_event("") is None
        assert reopened.get_event("x" * 600) is None
        assert reopened.read_stream("orders-1", None, False, 0) == ([events[0], events[2]], 1234.5)
        assert reopened.read_all(None, False, 0, None) == (events, 1234.5)
        assert reopened.read_stream("other", None, True, 0) == ([events[1]], 1234.5)
    finally:
        reopened.close()


def test_a_fresh_disk_cache_has_no_head(tmp_path: Path) -> None:
    cache = ReadCache(path=tmp_path / "c")
    assert cache.head_position is None
    cache.close()
    assert ReadCache().head_position is None


def test_disk_answers_what_memory_evicted_and_promotes_it(tmp_path: Path) -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=2 * size, path=tmp_path / "c")
    try:
        cache.put([ev(p) for p in range(1, 11)])
        assert sorted(cache._mem) == [9, 10]
        assert revisions(cache.read_stream("orders-1", None, False, 0)) == list(range(10))
        assert revisions(cache.read_stream("orders-1", None, True, 3)) == [9, 8, 7]
        assert positions(cache.read_all(None, True, 1, None)) == [10]
        assert cache.get_event(ev(4).event_id) is not None
        assert sorted(cache._mem) == [4, 10]  # promoted, and the LRU bound still holds
        check_invariants(cache)
    finally:
        cache.close()


def test_backwards_default_start_is_the_highest_on_either_tier(tmp_path: Path) -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=2 * size, path=tmp_path / "c")
    try:
        cache.put([ev(p) for p in range(1, 6)])
        cache.put([ev(p + 6, stream="orders-10", revision=p) for p in range(3)])
        cache.get_event(ev(1).event_id)  # memory: positions 8 and 1 only
        assert revisions(cache.read_stream("orders-1", None, True, 0)) == [4, 3, 2, 1, 0]
        assert revisions(cache.read_stream("orders-10", None, True, 0)) == [2, 1, 0]
        assert positions(cache.read_all(None, True, 2, None)) == [8, 7]
    finally:
        cache.close()


def test_a_contradicting_event_replaces_the_old_one_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "c"
    cache = ReadCache(path=path)
    cache.put([ev(1), ev(2)])
    cache.put([ev(2, event_id="bbbbbbbb-0000-7000-8000-000000000000", revision=7)])
    cache.close()
    reopened = ReadCache(max_bytes=0, path=path)  # disk only
    try:
        assert reopened.get_event(ev(2).event_id) is None
        assert reopened.read_stream("orders-1", 1, False, 0) is None
        assert positions(reopened.read_stream("orders-1", 7, False, 0)) == [2]
        assert positions(reopened.read_all(None, False, 0, None)) == [1, 2]
    finally:
        reopened.close()


def test_a_full_disk_drops_the_write_and_never_fails_the_caller(tmp_path: Path) -> None:
    path = tmp_path / "c"
    cache = ReadCache(path=path, map_size=256 * 1024)
    big = [ev(p, data=bytes(300 * 1024)) for p in (1, 2)]
    cache.put([ev(3, revision=2)])
    cache.put(big)  # does not fit the map: dropped on disk, kept in memory
    cache.note_head(3)
    assert positions(cache.read_all(None, False, 0, None)) == [1, 2, 3]
    cache.close()
    reopened = ReadCache(path=path, map_size=256 * 1024)
    try:
        assert reopened.head_position == 3
        assert reopened.read_all(None, False, 0, None) is None
        assert positions(reopened.read_all(3, False, 0, None)) == [3]
    finally:
        reopened.close()


def test_one_cache_per_directory_per_process(tmp_path: Path) -> None:
    cache = ReadCache(path=tmp_path / "c")
    with pytest.raises(ValueError):
        ReadCache(path=tmp_path / "c")
    cache.close()
    cache.close()  # idempotent
    ReadCache(path=tmp_path / "c").close()


def test_a_closed_cache_answers_nothing(tmp_path: Path) -> None:
    cache = ReadCache(path=tmp_path / "c")
    cache.put([ev(1)])
    cache.close()
    cache.put([ev(2)])
    cache.note_head(5)
    assert cache.get_event(ev(1).event_id) is None
    assert cache.read_all(None, False, 0, None) is None
    assert cache.read_stream("orders-1", None, True, 0) is None
    assert cache.head_position is None


def test_an_unusable_directory_leaves_a_memory_only_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = ReadCache(path=blocker)
    cache.put([ev(1)])
    assert cache.get_event(ev(1).event_id) is not None
    cache.close()


def test_concurrent_puts_and_reads_keep_the_invariants(tmp_path: Path) -> None:
    size = one_size(ev(1))
    cache = ReadCache(max_bytes=50 * size, path=tmp_path / "c")
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for p in range(base, base + 200):
                cache.put([ev(p, stream=f"s-{base}", revision=p - base)])
        except BaseException as exc:
            errors.append(exc)

    def reader(base: int) -> None:
        try:
            for _ in range(200):
                cache.read_stream(f"s-{base}", None, True, 10)
                cache.read_all(base, False, 20, None)
        except BaseException as exc:
            errors.append(exc)

    bases = [1, 1001, 2001, 3001]
    threads = [threading.Thread(target=f, args=(b,)) for b in bases for f in (writer, reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        check_invariants(cache)
        for b in bases:  # everything reached the disk tier
            assert revisions(cache.read_stream(f"s-{b}", None, False, 0)) == list(range(200))
    finally:
        cache.close()


def test_rejects_a_negative_max_bytes() -> None:
    with pytest.raises(ValueError):
        ReadCache(max_bytes=-1)


def test_the_disk_cache_does_not_fsync(tmp_path: Path) -> None:
    cache = ReadCache(path=tmp_path / "c")
    try:
        flags = cache._env.flags()
        assert not flags["sync"] and not flags["metasync"]
    finally:
        cache.close()
