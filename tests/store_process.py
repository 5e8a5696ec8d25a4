"""An LmdbEventStore in a process of its own, driven from the test process.

Several workers commit to one LMDB environment, each with its own store
(``supervisor.py``); :class:`StoreProcess` lets a test be each of them in
turn, command by command, or let them race. The child is started with the
``spawn`` method (a fresh interpreter, as the daemon's workers are): LMDB
must not be used across ``fork``.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from lighthouse_store.store import AppendCommand, AppendResult

# What comes back for one append: the result, or (error class name, metadata).
Outcome = AppendResult | tuple[str, dict[str, str]]


def _serve(conn: Connection, path: Path, clock_offset_ns: int) -> None:
    from lighthouse_store.config import Durability
    from lighthouse_store.errors import StoreError
    from lighthouse_store.lmdb_store import LmdbEventStore

    store = LmdbEventStore(
        path,
        map_size=256 << 20,
        durability=Durability.ASYNC,
        clock=lambda: time.time_ns() + clock_offset_ns,
    )
    held: list[Any] = []
    try:
        while True:
            request = conn.recv()
            if request is None:
                return
            name, args = request
            if name == "commit":
                commands, checkpoints = args
                try:
                    results = store.commit(commands, checkpoints)
                except StoreError as exc:
                    conn.send(("raised", type(exc).__name__))
                    continue
                conn.send(
                    [
                        r if isinstance(r, AppendResult) else (type(r).__name__, dict(r.metadata))
                        for r in results
                    ]
                )
            elif name == "race":  # append to one stream at exact revisions until n succeed
                conn.send(_race(store, *args))
            elif name == "hold_read":  # a read transaction left open (its reader slot taken)
                held.append(store._env.begin())
                conn.send(True)
            elif name == "hold_write":  # LMDB's write lock taken, a page written, never let go
                txn = store._env.begin(write=True)
                txn.put(b"half-done", b"x", db=store._dbs.meta)
                held.append(txn)
                conn.send(True)
            else:
                conn.send(getattr(store, name)(*args))
    finally:
        store.close()


def _race(store: Any, stream: str, n: int) -> list[AppendResult]:
    """Append one event at a time to ``stream``, each expecting the revision
    last seen, until ``n`` succeed; a WrongExpectedRevision says where the
    stream is now (another process appended)."""
    import uuid

    from lighthouse_proto.v1 import store_pb2 as pb
    from lighthouse_store.errors import WrongExpectedRevision
    from lighthouse_store.store import Expected, ExpectedKind, NewEvent

    def make(expected: Expected) -> AppendCommand:
        eid = uuid.uuid4()
        proposed = pb.ProposedEvent(event_id=str(eid), event_type="Raced", data=b"x")
        new = NewEvent(eid.bytes, proposed.SerializeToString())
        return AppendCommand.of(stream, expected, [new])

    won: list[AppendResult] = []
    revision = -1
    for _ in range(100 * n):
        if len(won) == n:
            break
        expected = (
            Expected(ExpectedKind.NO_STREAM)
            if revision < 0
            else Expected(ExpectedKind.EXACT, revision)
        )
        (result,) = store.commit([make(expected)])
        if isinstance(result, AppendResult):
            won.append(result)
            revision = result.last_revision
        elif isinstance(result, WrongExpectedRevision):
            actual = result.metadata["actual"]
            revision = -1 if actual == "no_stream" else int(actual)
        else:
            raise result
    return won


class StoreProcess:
    def __init__(self, path: Path, *, clock_offset_ns: int = 0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, path, clock_offset_ns), daemon=True)
        self._proc.start()
        child.close()

    def send(self, name: str, *args: Any) -> None:
        """Ask for a store method (or "commit", "race") without waiting."""
        self._conn.send((name, args))

    def answered(self, timeout: float) -> bool:
        """Whether an answer came within ``timeout`` seconds (it stays to be received)."""
        return self._conn.poll(timeout)

    def receive(self, timeout: float = 60.0) -> Any:
        if not self._conn.poll(timeout):
            raise TimeoutError(f"store process did not answer in {timeout}s")
        return self._conn.recv()

    def call(self, name: str, *args: Any, timeout: float = 60.0) -> Any:
        self.send(name, *args)
        return self.receive(timeout)

    def commit(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None = None
    ) -> Any:
        return self.call("commit", list(commands), dict(checkpoints or {}))

    def kill(self) -> None:
        """SIGKILL, as a crash would; the store is left as the process left it."""
        self._proc.kill()
        self._proc.join(30)

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        self._conn.close()
