"""The circuit breaker in front of the daemon.

It counts *calls*, not attempts. A call retries what is recoverable within
its deadline (``_retry.py``); only a call that still could not reach the
daemon when it gave up is one failure (``record_failure``). After
``failure_threshold`` such calls in a row the breaker opens: attempts are
refused locally (``allow()`` is False) instead of each one waiting out a
connect timeout. After ``reset_timeout`` seconds it is half-open and lets one
attempt through as the probe: an answer closes it; a probe that finds the
daemon unreachable (``record_attempt_failure``) opens it again at once, for
another ``reset_timeout``. So a short outage inside one call's deadline never
opens it, and a long one costs one refused connection per ``reset_timeout``.
Defaults (10 calls, 60 s) are those of the original design.

What a refused call does is its caller's policy (``_calls.py``): with a
fallback (the cache, the outbox) it takes it at once; without one it waits
for the half-open (``open_for()`` says how long) when its deadline reaches
that far, and otherwise fails at once with ``CircuitOpen``.

Decisions:

* The caller classifies errors: only failures that say "the daemon cannot be
  reached" are recorded. Any answer from the daemon, even an error, closes
  the breaker and resets the count (``record_success``).
* OPEN turns HALF_OPEN when ``state`` or ``allow()`` is read after the
  timeout; no timer thread. Time comes from an injected ``clock`` (monotonic
  by default) so tests step it by hand.
* Half-open admits one probe at a time. If a probe never reports (its caller
  was cancelled before it could), another probe is admitted once
  ``reset_timeout`` has passed since it started, so a lost probe cannot
  wedge the breaker open forever.
* A failure recorded while OPEN (a call let through before the breaker
  opened, failing late) is counted but does not extend the open window;
  any failure while HALF_OPEN opens the breaker again.
* One ``threading.Lock`` guards the state: the sync client calls in from
  several threads, and the async client from one event loop (the critical
  sections never block, so that is safe there too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 10,
        reset_timeout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._open = False  # CLOSED when False; OPEN or HALF_OPEN by the clock when True
        self._opened_at = 0.0
        self._failures = 0
        self._probe_started: float | None = None  # a half-open probe is in flight

    def _state(self, now: float) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        if now - self._opened_at >= self.reset_timeout:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def allow(self) -> bool:
        """May a call go to the daemon now? In HALF_OPEN, True admits the probe."""
        with self._lock:
            now = self._clock()
            state = self._state(now)
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.OPEN:
                return False
            if self._probe_started is not None and now - self._probe_started < self.reset_timeout:
                return False  # one probe at a time
            self._probe_started = now
            return True

    def open_for(self) -> float:
        """Seconds until an OPEN breaker half-opens; 0 when it is not OPEN."""
        with self._lock:
            now = self._clock()
            if self._state(now) is not BreakerState.OPEN:
                return 0.0
            return self._opened_at + self.reset_timeout - now

    def record_success(self) -> None:
        """The daemon answered (with a result or an error of its own)."""
        with self._lock:
            self._open = False
            self._failures = 0
            self._probe_started = None

    def record_attempt_failure(self) -> None:
        """One attempt found the daemon unreachable. While HALF_OPEN that is the
        probe failing: open again. Otherwise nothing: the call retries, and is
        counted once if it fails for good (:meth:`record_failure`)."""
        with self._lock:
            now = self._clock()
            if self._state(now) is BreakerState.HALF_OPEN:
                self._opened_at = now
                self._probe_started = None

    def record_failure(self) -> None:
        """A call failed because the daemon could not be reached, after its retries."""
        with self._lock:
            now = self._clock()
            self._failures += 1
            state = self._state(now)
            if state is BreakerState.HALF_OPEN or (
                state is BreakerState.CLOSED and self._failures >= self.failure_threshold
            ):
                self._open = True
                self._opened_at = now
                self._probe_started = None
