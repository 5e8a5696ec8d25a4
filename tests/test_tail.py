"""The in-memory tail of recent records (``tail.py``): pure logic."""

from __future__ import annotations

from lighthouse_store.tail import Tail


def group(first: int, n: int, size: int = 100) -> dict[int, bytes]:
    return {p: bytes([p % 256]) * size for p in range(first, first + n)}


def held(tail: Tail, upto: int) -> list[int]:
    return [p for p in range(1, upto + 1) if tail.get(p) is not None]


def test_the_newest_half_budget_is_always_held_and_the_budget_plus_a_group_at_most() -> None:
    tail = Tail(1000)
    for first in range(1, 201, 4):  # fifty groups of 4 x 100 bytes
        tail.add(group(first, 4))
        last = first + 3
        assert tail.held_bytes() <= 1000 + 400
        positions = held(tail, last)
        assert positions == list(range(positions[0], last + 1))  # the newest, no gaps
        assert len(positions) * 100 >= min(500, last * 100)  # all, until half the budget
        assert all(tail.get(p) == bytes([p % 256]) * 100 for p in positions)
    assert tail.get(1) is None and tail.get(150) is None


def test_old_records_are_dropped_a_generation_at_a_time() -> None:
    tail = Tail(1000)  # generations of 500 bytes
    tail.add(group(1, 3))  # 300: young
    tail.add(group(4, 3))  # 600: young turns old
    assert held(tail, 6) == [1, 2, 3, 4, 5, 6]
    tail.add(group(7, 5))  # 500: young turns old, the first six go
    assert held(tail, 11) == [7, 8, 9, 10, 11]
    tail.add(group(12, 1))
    assert held(tail, 12) == [7, 8, 9, 10, 11, 12]


def test_a_group_over_the_whole_budget_keeps_only_its_newest_half_budget() -> None:
    tail = Tail(1000)
    tail.add(group(1, 3))
    tail.add(group(4, 25))  # 2,500 bytes on its own
    assert held(tail, 28) == list(range(24, 29))
    assert tail.held_bytes() == 500
    tail.add(group(29, 5))  # half the budget: a new generation
    assert held(tail, 33) == list(range(29, 34))
    tail.add(group(34, 1))
    assert held(tail, 34) == list(range(29, 35))


def test_a_zero_budget_holds_nothing() -> None:
    tail = Tail(0)
    tail.add(group(1, 2))
    assert held(tail, 2) == []


def test_an_empty_group_changes_nothing() -> None:
    tail = Tail(1000)
    tail.add(group(1, 2))
    tail.add({})
    assert held(tail, 2) == [1, 2]
