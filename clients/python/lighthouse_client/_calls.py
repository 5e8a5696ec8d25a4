"""One call to the daemon: error mapping, retries and the circuit breaker.

:class:`Caller` runs an RPC, given as ``rpc(timeout_seconds)`` (one attempt:
a ``grpc.aio`` call with that timeout), under the client's layers, each its
own module:

- errors: a ``grpc.RpcError`` becomes a ``StoreError`` in one place,
  ``exceptions.handle_rpc_error``;
- retries: ``_retry.RetryPolicy`` repeats recoverable errors within the
  call's deadline (appends are safe to repeat: every event carries an id);
- the breaker: ``_breaker.CircuitBreaker`` is asked before every attempt
  and told what came of it. Any answer from the daemon is a success; an
  attempt that could not reach it matters only as a half-open probe; a call
  that gives up unreachable is one failure. An attempt the breaker refuses
  raises ``CircuitOpen`` with the time until it half-opens, which the retry
  policy waits for (``fallback=False``) or not (``fallback=True``: the
  caller has the cache or the outbox to go to; ``_degraded.py``). A call with
  a fallback also gives up on an unreachable daemon after
  ``RetryPolicy.fallback_after`` seconds instead of at its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from lighthouse_client._breaker import CircuitBreaker
from lighthouse_client._retry import RetryPolicy
from lighthouse_client.exceptions import (
    CircuitOpen,
    DeadlineExceeded,
    Unavailable,
    handle_rpc_error,
)

__all__ = ["UNREACHABLE", "Caller", "Rpc"]

T = TypeVar("T")

# One attempt of an RPC, given the seconds it may take.
Rpc = Callable[[float], Awaitable[T]]

# Errors that mean "the daemon could not be reached" (as opposed to "it said no").
UNREACHABLE = (Unavailable, DeadlineExceeded)


class Caller:
    def __init__(self, retry: RetryPolicy, breaker: CircuitBreaker) -> None:
        self.retry = retry
        self.breaker = breaker
        # How a call waits between attempts: on its event loop, or (the
        # blocking client's calls on their own thread) by blocking that thread.
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def __call__(
        self, rpc: Rpc[T], deadline: float, *, fallback: bool | Callable[[], bool] = False
    ) -> T:
        """``rpc``'s result, retried until ``deadline`` (time.monotonic()).
        ``fallback`` (or, when callable, what it says at each decision): the
        caller has somewhere else to go when the daemon cannot be reached, so
        an open breaker is not waited for, nor an unreachable daemon for
        longer than ``RetryPolicy.fallback_after``."""
        unreachable = False  # did the last attempt sent fail to reach the daemon?

        async def attempt(remaining: float) -> T:
            nonlocal unreachable
            if not self.breaker.allow():
                raise CircuitOpen(
                    "the daemon could not be reached by too many calls; circuit breaker open",
                    retry_after=self.breaker.open_for() or None,
                )
            try:
                result = await rpc(remaining)
            except grpc.RpcError as exc:
                error = handle_rpc_error(exc)
                unreachable = isinstance(error, UNREACHABLE)
                if unreachable:
                    self.breaker.record_attempt_failure()
                else:
                    self.breaker.record_success()  # it answered
                raise error from None
            unreachable = False
            self.breaker.record_success()
            return result

        try:
            return await self.retry.run(
                deadline,
                attempt,
                fallback=fallback if callable(fallback) else lambda: fallback,
                sleep=self.sleep,
            )
        except UNREACHABLE:
            if unreachable:
                self.breaker.record_failure()  # one call, however many attempts
            raise
