"""The in-memory tail: the most recently committed records, by position.

Live subscribers (and any read near the head) take records from here instead
of LMDB, so every subscriber of a fan-out shares one copy and nobody re-reads
and re-checks what was just written. The store adds a group's records right
after its commit is durable; readers never see more than LMDB holds. With
several worker processes each tail holds its own process's commits only, so
its positions have gaps: a reader takes any position it lacks from LMDB.
"""

from __future__ import annotations


class Tail:
    """Recently committed records, by position, bounded in bytes.

    Two generations, so that adding a group costs one dict update and never a
    Python step per record: records go into the young dict; once it holds half
    the budget it becomes the old one, and the old one is dropped whole. The
    tail therefore always holds at least the newest half of the budget (all of
    it, right after a swap) and at most the budget plus one group. A young
    generation bigger than the whole budget (one huge group) keeps only its
    newest half-budget of records when it becomes old, so memory stays bounded
    by the budget even then. Readers look in the young dict, then the old one;
    dict reads and the reference swaps are atomic under the GIL, and a record
    that moves or goes between the two lookups is simply read from LMDB.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._half = max_bytes // 2
        self._young: dict[int, bytes] = {}
        self._old: dict[int, bytes] = {}
        self._young_bytes = 0

    @property
    def max_bytes(self) -> int:
        return self._max

    def get(self, position: int) -> bytes | None:
        record = self._young.get(position)
        return record if record is not None else self._old.get(position)

    def held_bytes(self) -> int:
        """Bytes held (for tests: not safe to call while another thread adds)."""
        return sum(map(len, self._young.values())) + sum(map(len, self._old.values()))

    def add(self, committed: dict[int, bytes]) -> None:
        if not committed or self._max <= 0:
            return
        self._young.update(committed)  # ascending positions, after those held
        self._young_bytes += sum(map(len, committed.values()))
        if self._young_bytes < self._half:
            return
        young = self._young
        if self._young_bytes > self._max:  # one huge group: keep its newest records
            kept: dict[int, bytes] = {}
            size = 0
            for position in reversed(young):
                size += len(young[position])
                if size > self._half:
                    break
                kept[position] = young[position]
            young = dict(reversed(kept.items()))
        self._old = young  # a reader in between finds a record in either, or in LMDB
        self._young = {}
        self._young_bytes = 0
