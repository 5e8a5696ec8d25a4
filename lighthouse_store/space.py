"""Disk and map pressure: when the store stops taking appends, and takes them again.

The marks (SPEC §4)
===================

Two figures, each a used ratio:

- the data volume: :func:`used_ratio` (``df``'s Use%) from ``statvfs`` of the data
  directory (the space an unprivileged process can still use, as ``df``
  shows it; a volume's root-reserved blocks count as used);
- the LMDB map: the pages the store uses against what the map can become,
  ``--max-map-size`` (or, by default, the data file plus the volume's free
  space: what the disk holds).

At ``--disk-block-ratio`` (0.95) of either, appends are refused with
:class:`StorageFull` (``RESOURCE_EXHAUSTED``, reason ``STORAGE_FULL``,
failure class ``recoverable``, a RetryInfo), before the disk fills; they are
taken again by themselves once both are below ``--disk-resume-ratio``
(0.90). Between the two marks the state stays as it was (hysteresis), so a
store at the edge does not flap. At 0.80 (``WARN_RATIO``) the health check
warns, and the preallocator stops filling (``prealloc.py``). Reads,
subscriptions, idempotent retries of appends already recorded and consumer
checkpoints go on while appends are refused: they write nothing, or a few
bytes.

Cost and place
==============

:meth:`SpaceGuard.refusal` is asked once per group commit, in one place
(``LmdbEventStore._commit``); it reads the figures (a ``statvfs``, and the
map's use from LMDB's meta page) at most every ``interval`` seconds (0.1 s)
and otherwise answers from the last reading: a lock and a clock read. Between two
readings a burst of appends can still fill the disk: the commit then meets
ENOSPC, which is the same recoverable refusal (``lmdb_txn.py``), with
nothing of the group written. The serving process also asks every second
(``server.py``, the health monitor), so ``lighthouse_writes_blocked`` and
``/health`` recover by themselves with no append to try.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lighthouse_store.errors import SpacePressure, StorageFull

__all__ = ["WARN_RATIO", "SpaceGuard", "Usage", "fill_limit", "map_limit", "volume_usage"]

log = logging.getLogger("lighthouse_store.space")

WARN_RATIO = 0.8  # SPEC §4's warning mark: the health check warns, the preallocator stops
INTERVAL_S = 0.1  # statvfs at most this often
RETRY_AFTER_MS = 1_000


@dataclass(frozen=True, slots=True)
class Usage:
    """The volume's and the map's used ratios, and the volume's free bytes."""

    disk_ratio: float
    map_ratio: float
    free_bytes: int


def free_ratio(vfs: os.statvfs_result) -> float:
    """The free part of a volume as ``df`` counts it: of the space an
    unprivileged writer can have (what is used, plus what it may still
    take), the part it may still take. Blocks reserved for root count
    neither way, so ``1 -`` this is ``df``'s Use% (what the runbooks say to
    check), and it reaches 0 when such a writer can write no more."""
    usable = vfs.f_blocks - vfs.f_bfree + vfs.f_bavail
    return vfs.f_bavail / usable if usable > 0 else 0.0


def used_ratio(vfs: os.statvfs_result) -> float:
    """``df``'s Use% of a volume, 0..1 (:func:`free_ratio`)."""
    return 1.0 - free_ratio(vfs)


def volume_usage(path: Path) -> tuple[float, int]:
    """The data volume's used ratio and the bytes free for unprivileged users."""
    vfs = os.statvfs(path)
    if not vfs.f_blocks:
        return 0.0, 0
    return used_ratio(vfs), vfs.f_bavail * vfs.f_frsize


def map_limit(path: Path, max_map_size: int) -> int:
    """The most the map grows to: ``max_map_size``, or with 0 the size of the
    data volume (what the disk holds)."""
    if max_map_size:
        return max_map_size
    try:
        vfs = os.statvfs(path)
    except OSError:
        return 16 << 40
    return max(vfs.f_blocks * vfs.f_frsize, 1 << 20)


def fill_limit(path: Path, end: int, map_size: int) -> int:
    """The longest the preallocator may make a data file now ``end`` bytes
    long: within the map, and never past the volume's warning mark."""
    try:
        vfs = os.statvfs(path)
    except OSError:
        return end
    # Blocks the filler may take with the volume's used_ratio staying at
    # most WARN_RATIO: used + x <= WARN_RATIO * (used + available).
    used = vfs.f_blocks - vfs.f_bfree
    room = WARN_RATIO * (used + vfs.f_bavail) - used
    return min(map_size, end + max(0, int(room)) * vfs.f_frsize)


class SpaceGuard:
    """Says whether appends are refused for space. ``map_ratio(free)`` is the
    map's used ratio given the volume's free bytes. Thread-safe."""

    def __init__(
        self,
        path: Path,
        map_ratio: Callable[[int], float],
        *,
        block_ratio: float,
        resume_ratio: float,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._map_ratio = map_ratio
        self._block = block_ratio
        self._resume = min(resume_ratio, block_ratio)
        self._interval = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._last = Usage(0.0, 0.0, 1 << 62)
        self._refusal: StorageFull | None = None

    def usage(self) -> Usage:
        """The figures now (``statvfs`` at most every ``interval``)."""
        with self._lock:
            return self._usage()

    def _usage(self) -> Usage:
        now = self._clock()
        if now - self._read_at >= self._interval:
            try:
                ratio, free = volume_usage(self._path)
            except OSError:  # cannot tell: judge by the map alone
                ratio, free = 0.0, 1 << 62
            self._last = Usage(ratio, self._map_ratio(free), free)
            self._read_at = now
        return self._last

    def refusal(self) -> StorageFull | None:
        """The error to refuse appends with now, or None to take them."""
        with self._lock:
            u = self._usage()
            worst = max(u.disk_ratio, u.map_ratio)
            if self._refusal is None and worst >= self._block:
                self._refusal = self._full(u)
                log.error("appends refused: %s", self._refusal.message)
            elif self._refusal is not None and worst < self._resume:
                self._refusal = None
                log.warning(
                    "appends taken again: the data volume is %.0f%% used, the LMDB map %.0f%%",
                    u.disk_ratio * 100,
                    u.map_ratio * 100,
                )
            return self._refusal

    def _full(self, u: Usage) -> SpacePressure:
        which = "data volume" if u.disk_ratio >= u.map_ratio else "LMDB map (--max-map-size)"
        used = max(u.disk_ratio, u.map_ratio)
        return SpacePressure(
            f"the {which} is {used:.0%} used (appends are refused from"
            f" {self._block:.0%}, taken again below {self._resume:.0%}); reads go on",
            retry_after_ms=RETRY_AFTER_MS,
        )
