"""The degradation controller (SPEC §4): levels, triggers, hysteresis, and the one gate.

Levels
======

``normal``, ``warning`` (something is close to a limit: say so, take
everything), ``degraded`` (read-only: reads and subscriptions go on; an
append is refused with ``UNAVAILABLE``, reason ``DEGRADED``, failure class
``recoverable`` and a ``RetryInfo``, unless every one of its events is of an
:data:`ALLOWED_TYPES` type, which any stream accepts). The level is the
first of these that applies:

1. the level an operator forced (``AdminService.Degrade``, ``lighthouse-store
   admin degrade``), until ``Recover``;
2. ``degraded`` once corruption was found (every ``corruption.found``: the
   start-up check of the newest records, the scrub, a read that reached a
   corrupt record), until an operator's ``Recover`` (the finding does not go
   away by itself: ``verify`` and ``repair`` are the operator's);
3. what the triggers say (:class:`Hysteresis`).

Triggers
========

Each trigger is a figure and two marks (``--degrade-*`` settings,
``config.DegradationSettings``); a figure above its ``warn`` mark calls for
``warning``, above its ``degraded`` mark for ``degraded``:

- ``append_p99_seconds``: the p99 of the Append RPC's duration (the
  ``lighthouse_rpc_duration_seconds`` histogram, so queueing counts, as a
  client sees it) over the last ``--degrade-window-seconds``; a bucket's
  upper bound, ``inf`` beyond the last (1 s). 100 ms / 1 s.
- ``append_error_ratio``: appends that failed for the server's sake over all
  appends, in the same window: storage failures, internal errors,
  corruption. Bad input, a wrong expected revision, the refusals of this
  controller (``DEGRADED``, else ``degraded`` would hold itself), of a drain,
  of overload and of a full disk or map (:data:`NOT_THE_SERVERS`) do not
  count. 1% / 5%.
- ``disk_used_ratio`` (statvfs of the data volume) and ``map_used_ratio``
  (the LMDB map): 80% / never by default. Above 95% point 2 of issue 17
  refuses appends with ``STORAGE_FULL`` by itself; this controller says
  ``warning`` from 80%.
- ``memory_used_ratio``: the resident memory of the largest serving process
  over ``--memory-limit`` (default: the cgroup's limit, else no trigger).
  90% / 95%.

With ``--metrics off`` the RPC histograms are not kept: the p99 and error
triggers are off.

Hysteresis: the level goes up on the evaluation that sees a figure over a
mark; it comes down only once every figure is below ``--degrade-clear-ratio``
of the marks of the current level and has stayed so for
``--degrade-clear-seconds`` (SPEC's 95% / 90% for the disk is the same idea).
The controller evaluates every :data:`PERIOD_S` seconds (and at once on a
corruption finding), so a trigger takes effect within about a second of the
figure crossing (SPEC allows 30).

Level changes are events
========================

Every change of level is first appended to ``$system`` as a
``SystemDegradationDetected`` (up) or ``DegradationRecovery`` (down) event,
JSON data ``{"from", "to", "trigger", "figures", "thresholds"}``, committed
and fsynced (``record``) before the level takes effect (``apply``); if the
write fails, the level stays and the next evaluation tries again; but not
for corruption: a change to ``degraded`` for corruption takes effect even if
its event cannot be written, and is not written at all when LMDB found
damaged B-tree pages (writing there can abort the process). Each
operator call is recorded first as an ``EmergencyOperation`` event
(``{"action", "level", "reason"}``). The writes go ahead of queued appends:
with one process through the writer's priority slot
(``GroupCommitWriter.commit_first``), which commits before the next group;
with workers the supervisor decides, and commits them itself through
``LmdbEventStore.commit`` under LMDB's write lock (it holds the environment
anyway, for the preallocator), so no worker's queued group can go first;
the workers' subscriptions are woken as after any worker's commit
(``wakeups.py``), and each worker's gate is set over its control socket
(``supervisor.py``), within a second.

The gate
========

:class:`WriteGate` is what the append path reads: one attribute
(``refusal``) per append, inside the write transaction after the idempotency
check (``LmdbEventStore._apply``), so a retry of an append already recorded
is still answered. It is the only place an append is refused for the level.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.config import DegradationSettings
from lighthouse_store.corruption import BTREE, Finding
from lighthouse_store.errors import Degraded, InvalidArgument
from lighthouse_store.store import AppendCommand, AppendResult, Expected, NewEvent

__all__ = [
    "ALLOWED_TYPES",
    "DEGRADED",
    "LEVELS",
    "NORMAL",
    "SYSTEM_STREAM",
    "WARNING",
    "Controller",
    "Hysteresis",
    "Mark",
    "Sample",
    "Window",
    "WriteGate",
    "allowlisted",
    "marks",
    "memory_limit",
]

log = logging.getLogger("lighthouse_store.degradation")

NORMAL, WARNING, DEGRADED = "normal", "warning", "degraded"
LEVELS = (NORMAL, WARNING, DEGRADED)
RANK = {level: rank for rank, level in enumerate(LEVELS)}
SYSTEM_STREAM = "$system"
DETECTED, RECOVERY, EMERGENCY = (
    "SystemDegradationDetected",
    "DegradationRecovery",
    "EmergencyOperation",
)
ALLOWED_TYPES = frozenset({DETECTED, RECOVERY, EMERGENCY})
OPERATOR, CORRUPTION = "operator", "corruption"  # triggers that are no figure
PERIOD_S = 1.0
RETRY_MS = 5_000  # the RetryInfo of a refused append


@dataclass(frozen=True)
class Mark:
    """One trigger: its figure's name, and the marks above which it calls
    for ``warning`` and for ``degraded`` (``inf``: never)."""

    name: str
    warn: float
    degraded: float

    def level(self, value: float, scale: float = 1.0) -> str:
        if value > self.degraded * scale:
            return DEGRADED
        if value > self.warn * scale:
            return WARNING
        return NORMAL


def _seconds(ms: int) -> float:
    return ms / 1000 if ms else math.inf  # 0: no mark


def marks(s: DegradationSettings) -> tuple[Mark, ...]:
    return (
        Mark("append_p99_seconds", _seconds(s.p99_warn_ms), _seconds(s.p99_degraded_ms)),
        Mark("append_error_ratio", s.error_warn_ratio, s.error_degraded_ratio),
        # A ratio is never above 1: a mark of 1 is never reached.
        Mark("disk_used_ratio", s.used_warn_ratio, s.used_degraded_ratio),
        Mark("map_used_ratio", s.used_warn_ratio, s.used_degraded_ratio),
        Mark("memory_used_ratio", s.memory_warn_ratio, s.memory_degraded_ratio),
    )


Figures = Mapping[str, float | None]  # None: not known (off, or no sample yet)


class Hysteresis:
    """The level the triggers call for, with hysteresis (pure: the caller
    passes the time)."""

    def __init__(self, marks: tuple[Mark, ...], clear_ratio: float, clear_seconds: float) -> None:
        self._marks = marks
        self._clear_ratio = clear_ratio
        self._clear_seconds = clear_seconds
        self.level = NORMAL
        self.trigger = ""
        self._calm_since: float | None = None

    def step(self, figures: Figures, now: float) -> str:
        up, trigger = self._judge(figures, 1.0)
        held, _ = self._judge(figures, self._clear_ratio)
        if RANK[up] > RANK[self.level]:
            self.level, self.trigger, self._calm_since = up, trigger, None
        elif RANK[held] < RANK[self.level]:
            if self._calm_since is None:
                self._calm_since = now
            if now - self._calm_since >= self._clear_seconds:
                self.level, self._calm_since = held, None
                self.trigger = "" if held == NORMAL else self._judge(figures, self._clear_ratio)[1]
        else:
            self._calm_since = None
        return self.level

    def _judge(self, figures: Figures, scale: float) -> tuple[str, str]:
        level, trigger = NORMAL, ""
        for mark in self._marks:
            value = figures.get(mark.name)
            if value is None:
                continue
            found = mark.level(value, scale)
            if RANK[found] > RANK[level]:
                level, trigger = found, mark.name
        return level, trigger


Buckets = tuple[tuple[float, float], ...]  # (le, cumulative count)
# Append refusals that are no failure of the server (the error-rate trigger):
# bad input, a conflict, a refused caller, this controller's own refusal, a drain; and the
# refusals that are themselves the answer to a limit, with signals of their
# own (overload sheds load and clients retry; a full disk or map has its
# triggers): counting them would turn shedding load into refusing all of it.
NOT_THE_SERVERS = frozenset({
    "INVALID_ARGUMENT", "WRONG_EXPECTED_REVISION", "EVENT_ID_CONFLICT", "STREAM_NOT_FOUND",
    "EVENT_NOT_FOUND", "DEGRADED", "SHUTTING_DOWN", "OVERLOADED", "STORAGE_FULL",
    "RATE_LIMITED", "RESOURCE_CAP", "UNAUTHENTICATED", "PERMISSION_DENIED",
})  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """Cumulative Append figures of one moment: the duration buckets, the
    requests, the failures that count (:data:`NOT_THE_SERVERS` left out)."""

    buckets: Buckets = ()
    requests: float = 0.0
    errors: float = 0.0


class Window:
    """The Append p99 and error ratio over the last ``seconds`` (pure: the
    caller passes the time), from cumulative samples taken about once a second."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._samples: deque[tuple[float, Sample]] = deque()

    def add(self, now: float, sample: Sample) -> tuple[float | None, float | None]:
        """Take ``sample``; the p99 (seconds) and the error ratio since the
        oldest sample in the window (None: no append in it)."""
        samples = self._samples
        samples.append((now, sample))
        while len(samples) > 1 and now - samples[0][0] > self._seconds:
            samples.popleft()
        old = samples[0][1]
        requests = sample.requests - old.requests
        ratio = (sample.errors - old.errors) / requests if requests > 0 else None
        return p99_between(old.buckets, sample.buckets), ratio


def p99_between(old: Buckets, new: Buckets) -> float | None:
    """The p99 (a bucket's upper bound, ``inf`` beyond the last) of what a
    histogram observed between two readings of its cumulative buckets; None
    if nothing was (or the buckets do not match)."""
    if not new or len(old) not in (0, len(new)):
        return None
    counts = [n - (old[i][1] if old else 0.0) for i, (_, n) in enumerate(new)]
    total = counts[-1]
    if total <= 0:
        return None
    for (le, _), count in zip(new, counts, strict=True):
        if count >= 0.99 * total:
            return le
    return math.inf


class WriteGate:
    """What the append path reads on every append: ``refusal``, None unless
    degraded. Set by the controller (or, in a worker, by what the supervisor
    says); an attribute write is atomic, so no lock."""

    __slots__ = ("level", "refusal")

    def __init__(self) -> None:
        self.level = NORMAL
        self.refusal: Degraded | None = None

    def set(self, level: str, trigger: str = "", position: int | None = None) -> None:
        if level == DEGRADED:
            where = {} if position is None else {"position": str(position)}
            why = {
                CORRUPTION: "corruption was found; appends wait for an operator to verify and"
                " repair the store",
                OPERATOR: "an operator made it so",
            }.get(trigger, f"{trigger or 'a trigger'} is over its mark")
            self.refusal = Degraded(
                f"the store is degraded and read-only: {why}; reads and subscriptions go on",
                retry_after_ms=RETRY_MS,
                **where,
            )
        else:
            self.refusal = None
        self.level = level


def memory_limit(configured: int) -> int:
    """``--memory-limit``, or when it is 0 the cgroup's memory limit (v2,
    then v1), or 0: none."""
    if configured:
        return configured
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        # v2 says "max" for none; v1 a number near 2**63 rounded to pages.
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
        return 0
    return 0


def allowlisted(command: AppendCommand) -> bool:
    """Whether every event of ``command`` is of a type a degraded store takes
    (parsed only then: the normal path never gets here)."""
    return all(pb.ProposedEvent.FromString(p).event_type in ALLOWED_TYPES for p in command.proposed)


def system_event(event_type: str, data: dict[str, Any]) -> AppendCommand:
    """The append of one level or operator event to ``$system``."""
    event_id = uuid.uuid4()
    proposed = pb.ProposedEvent(
        event_id=str(event_id),
        event_type=event_type,
        data=json.dumps(data, sort_keys=True).encode(),
        content_type="application/json",
    ).SerializeToString()
    return AppendCommand.of(SYSTEM_STREAM, Expected(), [NewEvent(event_id.bytes, proposed)])


def recorded(result: AppendResult | Exception) -> AppendResult:
    """The result of a level event's commit, or its error raised."""
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True)
class Change:
    """A change of level, as recorded in ``$system``."""

    before: str
    after: str
    trigger: str
    figures: dict[str, Any]
    thresholds: dict[str, Any]

    @property
    def event_type(self) -> str:
        return DETECTED if RANK[self.after] > RANK[self.before] else RECOVERY

    def data(self) -> dict[str, Any]:
        return {
            "from": self.before,
            "to": self.after,
            "trigger": self.trigger,
            "figures": self.figures,
            "thresholds": self.thresholds,
        }


Record = Callable[[str, dict[str, Any]], None]  # (event type, JSON data): durable on return
Apply = Callable[[str, str, int | None], None]  # (level, trigger, position)


def _json_number(value: float | None) -> float | str | None:
    return value if value is None or math.isfinite(value) else "+Inf"


class Controller:
    """Decides the level (module docstring). ``figures()``: the trigger
    figures now; ``apply(level, trigger, position)``: make the level take
    effect (gates, workers, metrics); ``record`` (given to :meth:`start`):
    write one event to ``$system`` durably. Thread-safe; the evaluations run
    on a thread of its own."""

    def __init__(
        self,
        settings: DegradationSettings,
        figures: Callable[[], Figures],
        apply: Apply,
        *,
        corrupt: Finding | None = None,
        clock: Callable[[], float] = time.monotonic,
        period: float = PERIOD_S,
    ) -> None:
        self._marks = marks(settings)
        self._auto = Hysteresis(self._marks, settings.clear_ratio, settings.clear_seconds)
        self._figures_of = figures
        self._apply = apply
        self._clock = clock
        self._period = period
        self._record: Record | None = None
        self._lock = threading.RLock()
        self._forced: str | None = None
        self._corruption = corrupt
        self._figures: dict[str, float | None] = {}
        self.level = NORMAL
        self.trigger = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lh-degradation", daemon=True)
        if corrupt is not None:  # the store refuses appends already (start-up check)
            self._apply(DEGRADED, CORRUPTION, corrupt.position)

    def start(self, record: Record) -> Controller:
        """Evaluate from now on; ``record`` writes the level events."""
        self._record = record
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def corruption_found(self, finding: Finding) -> None:
        """A ``corruption.add_hook`` hook: quick, any thread."""
        with self._lock:
            if self._corruption is None:
                self._corruption = finding
        self._wake.set()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "level": self.level,
                "trigger": self.trigger,
                "forced_level": self._forced or "",
                "figures": {k: _json_number(v) for k, v in self._figures.items()},
            }

    def degrade(self, level: str, reason: str) -> dict[str, Any]:
        """An operator forces ``level``: recorded, then in effect on return."""
        level = level or DEGRADED
        if level not in (WARNING, DEGRADED):
            raise InvalidArgument("level: must be warning or degraded")
        with self._lock:
            self._emergency({"action": "degrade", "level": level, "reason": reason})
            self._forced = level
            self._settle()
            return self.status()

    def recover(self, reason: str) -> dict[str, Any]:
        """An operator clears a forced level and a corruption finding."""
        with self._lock:
            self._emergency({"action": "recover", "reason": reason})
            self._forced = None
            self._corruption = None
            self._settle()
            return self.status()

    def tick(self) -> None:
        """Evaluate once: read the figures, take the level they call for."""
        try:
            figures = dict(self._figures_of())
        except Exception:  # keep the level; the next evaluation tries again
            log.exception("degradation figures could not be read")
            return
        with self._lock:
            self._figures = figures
            self._auto.step(figures, self._clock())
            self._settle()

    def _target(self) -> tuple[str, str, int | None]:
        if self._forced is not None:
            return self._forced, OPERATOR, None
        if self._corruption is not None:
            return DEGRADED, CORRUPTION, self._corruption.position
        return self._auto.level, self._auto.trigger, None

    def _settle(self) -> None:
        """Record and apply the target level, if it changed (under the lock)."""
        level, trigger, position = self._target()
        if level == self.level:
            return
        change = Change(
            self.level,
            level,
            trigger,
            {k: _json_number(v) for k, v in self._figures.items()},
            {m.name: {"warn": _json_number(m.warn), "degraded": _json_number(m.degraded)}
             for m in self._marks},
        )  # fmt: skip
        if self._corruption is not None and trigger == CORRUPTION:
            change.figures["corruption"] = {
                "what": self._corruption.what, "position": self._corruption.position
            }  # fmt: skip
        if trigger == CORRUPTION and self._corruption is not None:
            self._record_corruption(change)
        else:
            self._write(change.event_type, change.data())
        log.log(
            logging.INFO if RANK[level] < RANK[self.level] else logging.WARNING,
            "degradation level %s -> %s (%s)", self.level, level, trigger or "triggers clear",
            extra={"fields": {"degradation_level": level, "trigger": trigger}},
        )  # fmt: skip
        self.level, self.trigger = level, trigger
        self._apply(level, trigger, position)

    def _record_corruption(self, change: Change) -> None:
        """The event of a change to degraded for corruption, if it can be
        written: never into a damaged B-tree (LMDB may abort the process on a
        damaged page), and a failed write does not hold the level back
        (refusing appends is the safe way)."""
        assert self._corruption is not None
        if self._corruption.what == BTREE:
            log.error("the degradation event is not written: the store has damaged pages")
            return
        try:
            self._write(change.event_type, change.data())
        except Exception:
            log.exception("the degradation event could not be written; degraded all the same")

    def _emergency(self, data: dict[str, Any]) -> None:
        if not data.get("reason"):
            raise InvalidArgument("reason: required (it is recorded in $system)")
        self._write(EMERGENCY, data)
        log.warning("emergency operation: %s", json.dumps(data))

    def _write(self, event_type: str, data: dict[str, Any]) -> None:
        if self._record is None:
            raise RuntimeError("the degradation controller is not started")
        self._record(event_type, data)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a failed write: the level stays; try again
                log.exception("the degradation level could not be recorded")
            self._wake.wait(self._period)
            self._wake.clear()
