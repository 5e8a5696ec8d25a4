"""Retry policy, declared as data and run by tenacity.

Only recoverable errors are retried (``StoreError.retryable``), with
exponential backoff and full jitter, within one overall deadline per call
(the call's ``timeout``). Every attempt gets what is left of it and no
attempt starts after it, so a call fails with the last real error (e.g.
Unavailable, or DeadlineExceeded when the daemon did not answer in time)
rather than a synthetic timeout. The deadline is the bound; ``max_attempts``
(0: none) can tighten it.

Waits have floors: a server's ``RetryInfo`` hint (``Overloaded.retry_after``,
``StorageFull.retry_after``: a daemon whose disk is filling),
and for an open circuit breaker the time until it lets a probe through
(``CircuitOpen.retry_after``). A wait that would end after the deadline is
not taken: the call fails at once with the error in hand. So a call that
meets an open breaker waits for its half-open and probes when its deadline
reaches that far, and fails fast otherwise; a call that has a fallback (the
cache, the outbox: ``run``'s ``fallback`` says whether it still has one) takes
it at once.

A call with a fallback also stops retrying an unreachable daemon once it has
been unreachable for ``fallback_after`` seconds in a row, well inside its
deadline: the cache answers stale reads and the outbox keeps appends (to be
sent exactly once), so waiting out the whole ``timeout`` would only hold the
caller up. The clock starts at the first unreachable attempt, not at the
call's start, so a long read that breaks is resumed like any other; and a
read whose events had started to arrive has no fallback left (a stale answer
would hide that the daemon is there). Other recoverable errors (an
overloaded daemon) are retried until the deadline: the daemon is there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from lighthouse_client.exceptions import (
    CircuitOpen,
    DeadlineExceeded,
    Overloaded,
    StorageFull,
    StoreError,
    Unavailable,
)

__all__ = ["RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 0  # 0: as many as the deadline allows
    initial_backoff: float = 0.05  # seconds
    max_backoff: float = 2.0
    fallback_after: float = 1.0  # seconds a call with a fallback retries an unreachable daemon

    def _wait(self) -> Callable[[RetryCallState], float]:
        jittered = wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff)

        def wait(state: RetryCallState) -> float:
            delay = float(jittered(state))
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Overloaded | StorageFull | CircuitOpen) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            return delay

        return wait

    async def run(
        self,
        deadline: float,
        attempt: Callable[[float], Awaitable[T]],
        *,
        fallback: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """Call ``attempt(remaining_seconds)`` until it succeeds, fails for good,
        or ``deadline`` (a time.monotonic() value) passes. ``fallback()``: the
        caller still has somewhere else to go (asked at each decision). Waits
        are ``sleep``'s."""
        unreachable_since: float | None = None  # start of the current unreachable run
        started = time.monotonic()
        # The first attempt runs without tenacity, whose machinery costs more
        # than the rest of the client's side of a call (perf/RESULTS.md, "Client
        # library cost"); if it fails, tenacity starts from its error as
        # attempt 1, so what is retried, the waits and the stops are as if
        # tenacity had run it.
        if deadline - started <= 0:
            raise DeadlineExceeded("the call's deadline passed before it could be sent")
        try:
            return await attempt(deadline - started)
        except StoreError as exc:
            failed: StoreError | None = exc
            if isinstance(exc, Unavailable | DeadlineExceeded):
                unreachable_since = time.monotonic()

        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, StoreError) or not exc.retryable:
                return False
            if not fallback():
                return True
            if isinstance(exc, CircuitOpen):
                return False
            if isinstance(exc, Unavailable | DeadlineExceeded) and unreachable_since is not None:
                return time.monotonic() - unreachable_since < self.fallback_after
            return True

        stop: stop_base = _StopAtDeadline(deadline)
        if self.max_attempts:
            stop = stop | stop_after_attempt(self.max_attempts)
        retrying = AsyncRetrying(
            sleep=sleep,
            stop=stop,
            wait=self._wait(),
            retry=retry_if_exception(retryable),
            reraise=True,
        )
        last: StoreError | None = None
        async for state in retrying:
            with state:
                if failed is not None:  # attempt 1, made above
                    last, failed = failed, None
                    raise last
                remaining = deadline - time.monotonic()
                if remaining <= 0:  # a wait overslept the deadline
                    raise last or DeadlineExceeded(
                        "the call's deadline passed before it could be sent"
                    )
                try:
                    return await attempt(remaining)
                except StoreError as exc:
                    last = exc
                    if not isinstance(exc, Unavailable | DeadlineExceeded):
                        unreachable_since = None
                    elif unreachable_since is None:
                        unreachable_since = time.monotonic()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


class _StopAtDeadline(stop_base):
    """Stop when the next wait would end at or after ``deadline`` (time.monotonic())."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline
