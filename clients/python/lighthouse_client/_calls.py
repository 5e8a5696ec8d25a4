"""One call to the daemon: error mapping, retries and the circuit breaker.

:class:`Caller` runs an RPC, given as ``rpc(timeout_seconds)`` (one attempt:
a ``grpc.aio`` call with that timeout), under the client's layers, each its
own module:

- errors: a ``grpc.RpcError`` becomes a ``StoreError`` in one place,
  ``exceptions.handle_rpc_error``;
- retries: ``_retry.RetryPolicy`` repeats recoverable errors within the
  call's deadline (appends are safe to repeat: every event carries an id);
- the breaker: ``_breaker.CircuitBreaker`` is asked before every attempt
  and told what came of it: any answer from the daemon is a success, an
  attempt that could not reach it a failure. An attempt the breaker refuses
  raises ``CircuitOpen``, which is not retried: the caller goes to its
  fallback (the cache, the outbox; ``_degraded.py``).
"""

from __future__ import annotations

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

    async def __call__(self, rpc: Rpc[T], deadline: float) -> T:
        """``rpc``'s result, retried until ``deadline`` (time.monotonic())."""

        async def attempt(remaining: float) -> T:
            if not self.breaker.allow():
                raise CircuitOpen("the daemon was unreachable too often; circuit breaker open")
            try:
                result = await rpc(remaining)
            except grpc.RpcError as exc:
                error = handle_rpc_error(exc)
                if isinstance(error, UNREACHABLE):
                    self.breaker.record_failure()
                else:
                    self.breaker.record_success()  # it answered
                raise error from None
            self.breaker.record_success()
            return result

        return await self.retry.run(deadline, attempt)
