"""The in-memory tail of recent records (``lmdb_store._Tail``): pure logic."""

from __future__ import annotations

from lighthouse_store.lmdb_store import _Tail


def group(first: int, n: int, size: int = 100) -> dict[int, bytes]:
    return {p: bytes([p % 256]) * size for p in range(first, first + n)}


def held(tail: _Tail) -> list[int]:
    return sorted(tail._records)


def test_old_records_go_first_and_the_budget_holds() -> None:
    tail = _Tail(1000)
    for first in range(1, 41, 4):  # ten groups of 4 x 100 bytes
        tail.add(group(first, 4))
        assert tail._bytes <= 1000
        assert tail._bytes == sum(len(r) for r in tail._records.values())
    assert held(tail) == list(range(31, 41))  # the newest 1,000 bytes
    assert tail.get(30) is None and tail.get(40) == bytes([40]) * 100


def test_a_group_over_the_budget_keeps_its_newest_records() -> None:
    tail = _Tail(1000)
    tail.add(group(1, 3))
    tail.add(group(4, 25))  # 2,500 bytes on its own
    assert held(tail) == list(range(19, 29))
    assert tail._bytes == 1000
    tail.add(group(29, 2))  # then it loses just enough of its oldest records
    assert held(tail) == list(range(21, 31))
    assert tail._bytes == 1000


def test_an_empty_group_changes_nothing() -> None:
    tail = _Tail(1000)
    tail.add(group(1, 2))
    tail.add({})
    assert held(tail) == [1, 2]
