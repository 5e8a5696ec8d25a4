"""Rate limits per principal: token buckets for requests, events, bytes and new streams.

Each principal (``principals.Principal.key``: its name, or the peer's host
when anonymous) has one token bucket per limit, holding up to one second's
worth (the rate itself) and refilled continuously:

- ``requests``: every call of the store service (``servicer._guard``), a
  streaming call once, when it starts;
- ``events`` and ``bytes``: what an Append asks to write, taken before it is
  queued;
- ``new_streams``: appends that created a stream, known only once committed
  (the result's first revision is 0), so they are charged after: the bucket
  may go into debt, and the principal's next call waits for it.

A call over a limit gets ``RESOURCE_EXHAUSTED`` with reason ``RATE_LIMITED``
(recoverable) and a RetryInfo of when the bucket will hold what was asked,
which the client library waits before it retries. Nothing of a refused
call is done. A rate of ``0`` turns its limit off. The defaults are far above
what one client of this daemon reaches on one core (about 2,000 single
appends or 40,000 batched events a second), so they stop a runaway client,
not a busy one; an operator sets them lower per deployment.

Each worker process keeps its own buckets (a client's connections are spread
over the workers by the kernel), so with N workers a principal may reach up
to N times a limit; the limits are per serving process, and the README says
so. Buckets of principals idle long enough to be full again are dropped
(at most :data:`MAX_PRINCIPALS` are kept, the oldest dropped first), so
anonymous peers cannot grow the table without bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from lighthouse_store.errors import RateLimited

MAX_PRINCIPALS = 10_000
KINDS = ("requests", "events", "bytes", "new_streams")


@dataclass(frozen=True)
class Rates:
    """Per second, per principal; 0: no limit."""

    requests: float
    events: float
    bytes: float
    new_streams: float


class Bucket:
    __slots__ = ("level", "rate", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.level = rate  # full: a second's worth
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.rate, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self, amount: float) -> float:
        """Seconds until the bucket holds ``amount`` (0: it does now). An
        amount over a second's worth needs a full bucket."""
        need = min(amount, self.rate) - self.level
        return need / self.rate if need > 1e-9 * self.rate else 0.0  # float refills


class RateLimiter:
    def __init__(self, rates: Rates, clock: Callable[[], float] = time.monotonic) -> None:
        self._rates = {k: float(getattr(rates, k)) for k in KINDS}
        self._clock = clock
        self._buckets: dict[str, dict[str, Bucket]] = {}
        self.enabled = any(self._rates.values())

    def _bucket(self, key: str, kind: str, now: float) -> Bucket | None:
        rate = self._rates[kind]
        if not rate:
            return None
        mine = self._buckets.pop(key, None)  # re-inserted: the dict is oldest-used first
        if mine is None:
            mine = {}
            while len(self._buckets) >= MAX_PRINCIPALS:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = mine
        bucket = mine.get(kind)
        if bucket is None:
            bucket = mine[kind] = Bucket(rate, now)
        bucket.refill(now)
        return bucket

    def take(self, key: str, **amounts: float) -> None:
        """Take ``amounts`` (by kind) from ``key``'s buckets, all or none;
        RateLimited saying when they will hold them."""
        if not self.enabled:
            return
        now = self._clock()
        buckets = [(kind, amount, self._bucket(key, kind, now)) for kind, amount in amounts.items()]
        for kind, amount, bucket in buckets:
            if bucket is not None and (wait := bucket.wait(amount)) > 0:
                rate = self._rates[kind]
                raise RateLimited(
                    f"over the rate limit of {rate:g} {kind.replace('_', ' ')} per second for this"
                    f" client (--rate-{kind.replace('_', '-')}); retry in {wait:.3f} s",
                    retry_after_ms=max(1, math.ceil(wait * 1000)),
                )
        for _, amount, bucket in buckets:
            if bucket is not None:
                bucket.level -= amount

    def charge(self, key: str, kind: str, amount: float) -> None:
        """Take ``amount`` after the fact, into debt if need be (new streams)."""
        if not self.enabled:
            return
        bucket = self._bucket(key, kind, self._clock())
        if bucket is not None:
            bucket.level -= amount
