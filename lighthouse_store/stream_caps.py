"""How many streaming calls a client may hold: caps on Read and Subscribe in flight.

:class:`StreamCaps` counts the streaming calls in flight, in all and per
principal (``principals.Principal.key``: the name, or the peer's host when
anonymous); over ``--max-streams`` or ``--max-streams-per-client`` a new
one is refused with ``RESOURCE_EXHAUSTED`` / ``RESOURCE_CAP``
(recoverable, with a RetryInfo). gRPC caps the streams of one connection
(``--max-streams-per-connection``, HTTP/2's MAX_CONCURRENT_STREAMS: a
client's further streams wait for a slot). With several worker processes
each has its own counts.

Why caps: a client that stops reading leaves its stream holding memory in
the daemon (the page in hand, and what gRPC has queued for it) for as long
as it likes; 1,500 such streams grew a daemon by 690-750 MiB
(``perf/RESULTS.md``). A byte budget on the pages in flight was tried and
did not bound it (gRPC queues more than one message per stream), so the
number of such streams is what is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lighthouse_store.errors import ResourceCap

RETRY_AFTER_MS = 1_000


class StreamCaps:
    """Streaming calls in flight, in all and per principal key."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self._by_key: dict[str, int] = {}

    @contextmanager
    def admit(self, key: str) -> Iterator[None]:
        mine = self._by_key.get(key, 0)
        if self.count >= self.total:
            raise ResourceCap(
                f"{self.count} streaming calls in flight, the most this server takes"
                " (--max-streams); retry when one has ended",
                retry_after_ms=RETRY_AFTER_MS,
            )
        if mine >= self.per_client:
            raise ResourceCap(
                f"{mine} streaming calls in flight from this client, the most one may have"
                " (--max-streams-per-client); retry when one has ended",
                retry_after_ms=RETRY_AFTER_MS,
            )
        self.count += 1
        self._by_key[key] = mine + 1
        try:
            yield
        finally:
            self.count -= 1
            left = self._by_key[key] - 1
            if left:
                self._by_key[key] = left
            else:
                del self._by_key[key]
