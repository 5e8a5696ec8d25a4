"""Retry policy, declared as data and run by tenacity.

Only recoverable errors are retried (``StoreError.retryable``), with
exponential backoff and full jitter, within one overall deadline per call
(the call's ``timeout``: every attempt gets what is left of it, and no
attempt starts after it, so a call fails with the last real error, e.g.
Unavailable, rather than a synthetic timeout; the stop is measured against
that deadline itself, not against tenacity's own start). A server's
``RetryInfo`` hint (``Overloaded.retry_after``) is a floor for the next wait.
An open circuit breaker is not retried: the caller goes to its fallback.
"""

from __future__ import annotations

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

from lighthouse_client.exceptions import CircuitOpen, DeadlineExceeded, Overloaded, StoreError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 20
    initial_backoff: float = 0.05  # seconds
    max_backoff: float = 2.0

    def _wait(self) -> Callable[[RetryCallState], float]:
        jittered = wait_random_exponential(multiplier=self.initial_backoff, max=self.max_backoff)

        def wait(state: RetryCallState) -> float:
            delay = float(jittered(state))
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Overloaded) and exc.retry_after:
                delay = max(delay, exc.retry_after)
            return delay

        return wait

    async def run(self, deadline: float, attempt: Callable[[float], Awaitable[T]]) -> T:
        """Call ``attempt(remaining_seconds)`` until it succeeds, fails for good,
        or ``deadline`` (a time.monotonic() value) passes."""
        stop = stop_after_attempt(self.max_attempts) | _StopAtDeadline(deadline)
        retrying = AsyncRetrying(
            stop=stop,
            wait=self._wait(),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        last: StoreError | None = None
        async for state in retrying:
            with state:
                remaining = deadline - time.monotonic()
                if remaining <= 0:  # a wait overslept the deadline
                    raise last or DeadlineExceeded(
                        "the call's deadline passed before it could be sent"
                    )
                try:
                    return await attempt(remaining)
                except StoreError as exc:
                    last = exc
                    raise
        raise AssertionError("unreachable")  # pragma: no cover


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, StoreError) and exc.retryable and not isinstance(exc, CircuitOpen)



class _StopAtDeadline(stop_base):
    """Stop when the next wait would end at or after ``deadline`` (time.monotonic())."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline
