"""UmaDB as a peer (``--peer umadb``): its server and its Python client.

UmaDB (https://umadb.io) is an event store in Rust with a gRPC API. ``pip install
umadb`` brings its Python client (``umadb.Client``, synchronous, Rust bindings
that release the GIL while a call waits, so one client per thread runs
concurrently) and its server (the ``umadb`` script, which runs the same server
in-process through the bindings).

**Server.** ``umadb --listen 127.0.0.1:0 --db-path <fresh dir>``, every other
setting at its default (``UMADB_*`` variables are removed from its environment,
so none comes from the caller's): file I/O reads, no page cache, zero-filled
pages (a new database file starts with 256 MiB of them, as our daemon keeps
zero-filled space ahead of its data), the
synchronous (not pipelined) writer, no TLS, no API key. It does not print the
port it got, so the harness reads it from its listening socket (``peers.py``),
and checks that it listens on 127.0.0.1 alone.

**Durability.** UmaDB has no durability setting: every commit writes its pages,
``fdatasync``\\ s the file, writes the new header page and ``fdatasync``\\ s
again, and only then answers the append (its ``mvcc.rs``, ``commit``; the
``no_fsync`` switch in ``pager.rs`` is hard-wired off). Its writer groups the
appends waiting for it into one commit, as ours does. Checked for umadb 0.7.8 on
the dev VM with ``strace -f -e trace=fdatasync`` on the server: 50 sequential
single-event appends made 100 ``fdatasync`` calls, each append's two before the
writer thread woke the gRPC handler; ``tests/test_perf_peer.py`` repeats the
check where strace can attach. :data:`VERIFIED_VERSION` is the version it was
checked for; with another one the harness says durability is not verified.

**Mapping.** UmaDB keeps one global log of events, each with a type, tags and
data, and no streams: consistency is a condition on a query over types and tags
(Dynamic Consistency Boundaries). The harness's operations map to it so:

======================================  ======================================
ours (``lighthouse_client``)            UmaDB (``umadb.Client``)
======================================  ======================================
``append(stream, events)``, expected    ``append(events)`` with no condition,
revision ANY (no check)                 each event tagged with the stream name
event id: UUIDv7, made by ``NewEvent``  ``uuid=uuid4()`` on each event (what
                                        makes its retries idempotent)
event type ``BenchEvent``, 1 KiB data,  event type ``BenchEvent``, the same
content type, no metadata               1 KiB data, no metadata
``read_all(from_position=1,             ``read(start=1, limit=N)``, events
max_count=N)``                          taken with ``next_batch()``
``info().head_position``                ``head()``
======================================  ======================================

Not mapped, so not compared: an append with an expected revision (in UmaDB, an
``AppendCondition`` on the stream's tag after the last position the client
saw), GetEvent by id (UmaDB has no lookup by id), subscriptions.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peers import ProcessServer
from workloads import EVENT_BYTES, EVENT_TYPE

if TYPE_CHECKING:
    import umadb

VERIFIED_VERSION = "0.7.8"
DURABILITY = (
    "fdatasync twice per commit (pages, then header) before the append is acknowledged;"
    " no setting turns it off"
)


def version() -> str:
    return importlib.metadata.version("umadb")


class Server(ProcessServer):
    """``umadb`` on 127.0.0.1, on a fresh data dir, with its defaults."""

    def __init__(self, work: Path) -> None:
        super().__init__(work, "umadb")

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "umadb"  # installed by the umadb package
        return [str(script), "--listen", "127.0.0.1:0", "--db-path", str(self.data_dir)]

    def start(self, timeout: float = 30.0) -> None:
        # Its settings also come from UMADB_* variables: none from ours.
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("UMADB_")}
        try:
            super().start(timeout)
        finally:
            os.environ.update(saved)

    def info(self) -> dict[str, Any]:
        v = version()
        verified = v == VERIFIED_VERSION
        return {
            "peer": "umadb",
            "server_version": v,
            "durability": DURABILITY if verified else f"not verified for umadb {v}",
            "durability_verified": verified,
            "command": self.command(),
            "address": self.address,
            "pid": self.pid,
        }


class Driver:
    """One ``umadb.Client`` (synchronous; one per thread), bound to one stream:
    its events carry the stream name as their tag."""

    def __init__(self, address: str, stream: str) -> None:
        import umadb

        self._umadb = umadb
        self.client: umadb.Client = umadb.Client(f"http://{address}")
        self.tags = [stream]
        self.payload = os.urandom(EVENT_BYTES)

    def batch(self, events: int) -> list[umadb.Event]:
        event = self._umadb.Event
        return [
            event(EVENT_TYPE, self.payload, tags=self.tags, uuid=uuid.uuid4())
            for _ in range(events)
        ]

    def append(self, batch: list[umadb.Event]) -> int:
        self.client.append(batch)
        return len(batch)

    def replay(self, count: int) -> int:
        response = self.client.read(start=1, limit=count)
        n = 0
        while events := response.next_batch():
            n += len(events)
        return n

    def head(self) -> int:
        return self.client.head() or 0

    def close(self) -> None:
        self.client.close()


def driver(address: str, stream: str) -> Driver:
    return Driver(address, stream)
