"""The counts and time caps of a run (``bench.py``), and what the phases take of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Sizes:
    """Counts and time caps of one run (every loop stops at whichever comes first)."""

    latency_calls: int
    latency_warmup: int
    window_s: float  # each throughput window
    replay_events: int
    get_calls: int
    lmdb1_commits: int
    lmdb100_commits: int
    phase_cap_s: float  # time cap of a count-bounded phase


FULL = Sizes(3000, 300, 5.0, 100_000, 3000, 2000, 300, 60.0)
QUICK = Sizes(300, 50, 1.0, 10_000, 300, 200, 30, 10.0)


class SizesLike(Protocol):
    """What the phases outside a round (``client_phase.py``,
    ``comparison_phases.py``) take of :class:`Sizes`: a test gives them smaller ones."""

    @property
    def latency_calls(self) -> int: ...
    @property
    def latency_warmup(self) -> int: ...
    @property
    def window_s(self) -> float: ...
    @property
    def replay_events(self) -> int: ...
    @property
    def phase_cap_s(self) -> float: ...
