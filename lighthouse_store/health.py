"""Health: what ``/health`` and gRPC health say, from figures read off the metrics.

Checks and levels
=================

Four components, each ``pass``, ``warn`` or ``fail``:

- ``storage``: ``fail`` while writes are blocked: the data volume or the
  LMDB map is past ``--disk-block-ratio`` (until below
  ``--disk-resume-ratio``: ``space.py``), or an append was refused because
  storage could not take it (a full disk or map, a failed write) and no
  commit of events has succeeded since; ``warn`` when the LMDB map or the
  data volume is 80% used or more (SPEC §4's warning mark).
- ``writer``: ``fail`` while the degradation controller's level is
  ``degraded`` (``degradation.py``: appends refused, reads go on), ``warn``
  while it is ``warning``; ``fail`` when appends have waited ``--writer-stall-seconds``
  with no commit finishing (in any worker); ``warn`` when the commit p99 over
  the last minute is above 100 ms.
- ``subscriptions``: ``warn`` when a subscription is more than
  ``--subscribe-fell-behind-events`` behind the head; never ``fail``
  (a slow reader does not stop the store).
- ``process``: ``fail`` while nothing serves (starting, shutting down, every
  worker down); ``warn`` when a worker is down (the others serve), or open
  descriptors reach 75% of the limit.

The level: ``unavailable`` while nothing serves, ``degraded`` when a check
fails (reads and subscriptions go on; appends do not: SPEC §4's read-only
level), ``warning`` when one warns, else ``normal``. ``/health`` answers 200
unless a check fails, then 503: 200 means the daemon serves reads and
writes. gRPC health (``grpc.health.v1``), for ``""`` and for the store
service alike, says ``NOT_SERVING`` while the ``storage`` or ``writer`` check
fails, when ``/health`` answers 503 (:class:`HealthMonitor` tells it of every
change; ``ops.py``). The other way ``/health`` fails, ``process``, is when
nothing serves gRPC: it does not answer, or it is draining, which it says
itself.

Everything here is pure but :class:`HealthMonitor`: :func:`evaluate` takes
the :class:`Figures` of one moment, so the same code judges one process and
a supervisor's workers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lighthouse_store.degradation import DEGRADED, NORMAL, WARNING
from lighthouse_store.degradation import p99_between as p99_between

__all__ = [
    "COMPONENTS",
    "Figures",
    "HealthMonitor",
    "Report",
    "StorageFigures",
    "Thresholds",
    "UsageFigures",
    "WriterFigures",
    "evaluate",
]

log = logging.getLogger("lighthouse_store.health")

COMPONENTS = ("storage", "writer", "subscriptions", "process")
PASS, WARN, FAIL = "pass", "warn", "fail"
_RANK = {PASS: 0, WARN: 1, FAIL: 2}
HISTORY = 20  # level changes kept for /health/detailed
STARTING, SHUTTING_DOWN = "starting", "shutting down"  # Figures.not_serving, as asked for
PLANNED = frozenset({STARTING, SHUTTING_DOWN})
P99_WINDOW_S = 60.0  # the commit p99 is over about this long
_P99_STEP_S = 5.0  # how far apart the samples it is computed from are


@dataclass(frozen=True)
class WriterFigures:
    """One serving process's writer and subscriptions (a worker, or the daemon)."""

    worker: int | None = None
    queue_depth: int = 0
    queue_bytes: int = 0
    last_commit: float = 0.0  # unix time of its newest commit of appends; 0: none yet
    busy_since: float = 0.0  # unix time since which the queued appends wait with no commit
    writes_blocked: bool = False
    subscriptions: int = 0
    max_lag: int = 0


@dataclass(frozen=True)
class StorageFigures:
    data_bytes: int = 0
    map_used_ratio: float = 0.0
    disk_free_ratio: float = 1.0
    head_position: int = 0


@dataclass(frozen=True)
class UsageFigures:
    """A process's resident memory and descriptors."""

    rss_bytes: int = 0
    open_fds: int = 0
    max_fds: int = 0
    worker: int | None = None
    pid: int | None = None


@dataclass(frozen=True)
class Figures:
    """Everything the checks look at, read at one moment."""

    at: float  # unix time
    not_serving: str  # why nothing serves; "" when serving
    writers: tuple[WriterFigures, ...]  # one per serving process
    storage: StorageFigures
    process: UsageFigures  # the process serving the endpoint
    durability: str
    workers_down: tuple[int, ...] = ()  # worker indexes not serving (being restarted)
    worker_usage: tuple[UsageFigures, ...] = ()
    commit_buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count)
    degradation: str = NORMAL  # the controller's level (degradation.py)
    degradation_trigger: str = ""


@dataclass(frozen=True)
class Thresholds:
    stall_seconds: float = 5.0
    used_warn_ratio: float = 0.8
    fds_warn_ratio: float = 0.75
    commit_p99_warn_seconds: float = 0.1
    lag_warn_events: int = 10_000


@dataclass(frozen=True)
class Check:
    status: str
    reason: str
    figures: dict[str, Any]

    def brief(self) -> dict[str, Any]:
        return {"status": self.status, **({"reason": self.reason} if self.reason else {})}


@dataclass(frozen=True)
class Report:
    status: str
    level: str
    checks: dict[str, Check]
    durability: str
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return 503 if self.status == FAIL else 200

    @property
    def writes_ok(self) -> bool:
        """No check of the write path fails: gRPC health's SERVING. (When only
        ``process`` fails, nothing serves gRPC, or it is draining and says
        NOT_SERVING by itself.)"""
        return FAIL not in (self.checks["storage"].status, self.checks["writer"].status)

    def summary(self) -> dict[str, Any]:
        """The body of ``/health``."""
        return {
            "status": self.status,
            "level": self.level,
            "checks": {name: c.brief() for name, c in self.checks.items()},
        }

    def detailed(self) -> dict[str, Any]:
        """The body of ``/health/detailed``."""
        return {
            "status": self.status,
            "level": self.level,
            "durability": self.durability,
            "checks": {name: c.brief() | c.figures for name, c in self.checks.items()},
            "history": self.history,
        }

    def component(self, name: str) -> tuple[int, dict[str, Any]]:
        """The status code and body of ``/health/{name}`` (a known component)."""
        c = self.checks[name]
        return (503 if c.status == FAIL else 200), {"component": name, **c.brief(), **c.figures}


def _worst(statuses: list[str]) -> str:
    return max(statuses, key=_RANK.__getitem__, default=PASS)


def _storage(f: Figures, t: Thresholds) -> Check:
    s = f.storage
    # While degraded the writer check says why appends are refused.
    blocked = [w.worker for w in f.writers if w.writes_blocked and f.degradation != DEGRADED]
    figures = {
        "data_bytes": s.data_bytes,
        "map_used_ratio": _significant(s.map_used_ratio),
        "disk_free_ratio": _significant(s.disk_free_ratio),
        "head_position": s.head_position,
        "writes_blocked": bool(blocked),
    }
    if blocked:
        return Check(FAIL, "appends are refused: storage cannot take them (the data volume or"
                           " the LMDB map past --disk-block-ratio, or a refused commit and"
                           " none succeeded since)", figures)  # fmt: skip
    if s.map_used_ratio >= t.used_warn_ratio:
        return Check(WARN, f"the LMDB map is {s.map_used_ratio:.0%} used", figures)
    if 1 - s.disk_free_ratio >= t.used_warn_ratio:
        return Check(WARN, f"the data volume is {1 - s.disk_free_ratio:.0%} used", figures)
    return Check(PASS, "", figures)


def _significant(ratio: float) -> float:
    """Six significant digits: a large volume's tiny used part is not shown as 0."""
    return float(f"{ratio:.6g}")


def _writer(f: Figures, t: Thresholds, p99: float | None) -> Check:
    last = max((w.last_commit for w in f.writers), default=0.0)
    figures: dict[str, Any] = {
        "queue_depth": sum(w.queue_depth for w in f.writers),
        "queue_bytes": sum(w.queue_bytes for w in f.writers),
        "last_commit_age_seconds": round(f.at - last, 3) if last else None,
        "commit_p99_seconds": _bound(p99),
        "stall_seconds": t.stall_seconds,
    }
    if f.degradation == DEGRADED:
        return Check(FAIL, f"appends are refused: the store is degraded"
                           f" ({f.degradation_trigger}); reads go on", figures)  # fmt: skip
    stalled = [w for w in f.writers if w.queue_depth and f.at - w.busy_since > t.stall_seconds]
    if stalled:
        w = max(stalled, key=lambda w: f.at - w.busy_since)
        where = "" if w.worker is None else f" in worker {w.worker}"
        return Check(FAIL, f"appends have waited {f.at - w.busy_since:.1f} s with no commit"
                           f" finishing{where}", figures)  # fmt: skip
    if f.degradation == WARNING:
        return Check(WARN, f"degradation level warning ({f.degradation_trigger})", figures)
    if p99 is not None and p99 > t.commit_p99_warn_seconds:
        return Check(WARN, f"commit p99 over the last minute is above"
                           f" {t.commit_p99_warn_seconds * 1000:g} ms", figures)  # fmt: skip
    return Check(PASS, "", figures)


def _bound(p99: float | None) -> float | str | None:
    """A bucket's upper bound; beyond the last one, Prometheus's ``"+Inf"``."""
    if p99 is None or math.isfinite(p99):
        return p99
    return "+Inf"


def _subscriptions(f: Figures, t: Thresholds) -> Check:
    lag = max((w.max_lag for w in f.writers), default=0)
    figures = {"count": sum(w.subscriptions for w in f.writers), "max_lag_events": lag}
    if lag > t.lag_warn_events:
        return Check(WARN, f"a subscription is {lag} events behind the head", figures)
    return Check(PASS, "", figures)


def _process(f: Figures, t: Thresholds) -> Check:
    p = f.process
    figures: dict[str, Any] = {"rss_bytes": p.rss_bytes, "open_fds": p.open_fds,
                               "max_fds": p.max_fds}  # fmt: skip
    if f.worker_usage or f.workers_down:
        figures["workers"] = [
            {"worker": u.worker, "pid": u.pid, "rss_bytes": u.rss_bytes, "open_fds": u.open_fds}
            for u in f.worker_usage
        ]
        figures["workers_down"] = list(f.workers_down)
    if f.not_serving:
        return Check(FAIL, f.not_serving, figures)
    if f.workers_down:
        down = ", ".join(map(str, f.workers_down))
        return Check(WARN, f"worker {down} not serving (being restarted)", figures)
    for u in (p, *f.worker_usage):
        if u.max_fds and u.open_fds >= t.fds_warn_ratio * u.max_fds:
            who = "this process" if u.worker is None else f"worker {u.worker}"
            return Check(WARN, f"{who} has {u.open_fds} of {u.max_fds} descriptors open", figures)
    return Check(PASS, "", figures)


def evaluate(f: Figures, t: Thresholds, commit_p99: float | None = None) -> Report:
    checks = {
        "storage": _storage(f, t),
        "writer": _writer(f, t, commit_p99),
        "subscriptions": _subscriptions(f, t),
        "process": _process(f, t),
    }
    status = _worst([c.status for c in checks.values()])
    if f.not_serving:
        level = "unavailable"
    else:
        level = {PASS: "normal", WARN: "warning", FAIL: "degraded"}[status]
    return Report(status, level, checks, f.durability)


class HealthMonitor:
    """Judges the figures of ``source`` when asked and every ``period``
    seconds on a thread of its own, keeps the recent level changes, and calls
    ``on_verdict(serving)`` (from either thread; it must not block) whenever
    :attr:`Report.writes_ok` changes: the hook that keeps gRPC health in step."""

    def __init__(
        self,
        source: Callable[[], Figures],
        thresholds: Thresholds,
        on_verdict: Callable[[bool], None] | None = None,
        period: float = 0.5,
    ) -> None:
        self._source = source
        self._thresholds = thresholds
        self._on_verdict = on_verdict
        self._period = period
        self._lock = threading.Lock()
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._samples: deque[tuple[float, tuple[tuple[float, float], ...]]] = deque()
        self._level = ""
        self._serving = True  # gRPC health starts SERVING
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lh-health", daemon=True)

    @property
    def serving(self) -> bool:
        """The latest verdict: no check of the write path fails."""
        return self._serving

    def set_verdict_hook(self, on_verdict: Callable[[bool], None]) -> None:
        """Tell ``on_verdict`` of changes from now on; it hears the current verdict now."""
        with self._lock:
            self._on_verdict = on_verdict
            on_verdict(self._serving)

    def start(self) -> HealthMonitor:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def report(self) -> Report:
        """Judge the figures of now."""
        with self._lock:
            try:
                figures = self._source()
            except Exception as exc:  # a figure that cannot be read is a failing check
                log.exception("health figures could not be read")
                figures = Figures(time.time(), f"health figures unreadable: {type(exc).__name__}",
                                  (), StorageFigures(), UsageFigures(), "")  # fmt: skip
            report = evaluate(figures, self._thresholds, self._commit_p99(figures))
            # Under the lock, so that the hook hears the verdicts in order.
            if self._note(report, figures) and self._on_verdict is not None:
                self._on_verdict(report.writes_ok)
            history = list(self._history)
        return Report(report.status, report.level, report.checks, report.durability, history)

    def _commit_p99(self, f: Figures) -> float | None:
        samples = self._samples
        while samples and f.at - samples[0][0] > P99_WINDOW_S + _P99_STEP_S:
            samples.popleft()
        if not samples or f.at - samples[-1][0] >= _P99_STEP_S:
            samples.append((f.at, f.commit_buckets))
        return p99_between(samples[0][1], f.commit_buckets)

    def _note(self, report: Report, figures: Figures) -> bool:
        """Record a level change; whether the verdict (fails or not) changed."""
        at = figures.at
        if report.level != self._level:
            reasons = [f"{n}: {c.reason}" for n, c in report.checks.items() if c.reason]
            self._history.append({
                "at": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
                "from": self._level or "starting",
                "to": report.level,
                "reason": "; ".join(reasons),
            })  # fmt: skip
            # Starting and a requested shutdown are no trouble.
            planned = report.level == "normal" or figures.not_serving in PLANNED
            log.log(logging.INFO if planned else logging.WARNING,
                    "health: %s -> %s%s", self._level or "starting", report.level,
                    f" ({'; '.join(reasons)})" if reasons else "")  # fmt: skip
            self._level = report.level
        serving = report.writes_ok
        if serving == self._serving:
            return False
        self._serving = serving
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.report()
