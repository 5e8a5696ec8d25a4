"""What the disk and map pressure code costs on the hot paths, in process.

    python perf/space_cost.py [--rounds 5]

Times, on one store of this tree (tail off, async durability), an empty
read transaction without and with the map gate (``lmdb_txn.MapGate``: every
read page opens one), the space guard's per-commit check
(``SpaceGuard.refusal``), and a one-event commit with the guard and with it
replaced by a no-op; prints the minimum of ``--rounds`` runs of each.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_txn
from lighthouse_store.config import Durability
from lighthouse_store.errors import StorageFull
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendCommand, Expected, NewEvent

N_TXN = 100_000
N_COMMIT = 3_000


def _command() -> AppendCommand:
    event_id = uuid.uuid4()
    proposed = pb.ProposedEvent(event_id=str(event_id), event_type="T", data=b"{}")
    event = NewEvent(event_id.bytes, proposed.SerializeToString())
    return AppendCommand.of("s", Expected(), [event])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbEventStore(Path(tmp), map_size=1 << 30, durability=Durability.ASYNC,
                               tail_bytes=0)  # fmt: skip
        guard = store._space
        real = guard.refusal

        def no_guard() -> StorageFull | None:
            return None

        def read() -> None:
            with lmdb_txn.read_transaction(store._env):
                pass

        def read_gated() -> None:
            with lmdb_txn.read_transaction(store._env, store._gate):
                pass

        def commit() -> None:
            store.commit([_command()])

        def commit_unguarded() -> None:
            guard.refusal = no_guard  # type: ignore[method-assign]
            try:
                store.commit([_command()])
            finally:
                guard.refusal = real  # type: ignore[method-assign]

        cases: dict[str, tuple[Callable[[], object], int]] = {
            "read transaction": (read, N_TXN),
            "read transaction, gated": (read_gated, N_TXN),
            "space guard check": (guard.refusal, N_TXN),
            "commit of 1 event": (commit, N_COMMIT),
            "commit of 1 event, no guard": (commit_unguarded, N_COMMIT),
        }
        best = {name: float("inf") for name in cases}
        try:
            for _ in range(rounds):
                for name, (fn, n) in cases.items():
                    best[name] = min(best[name], timeit.timeit(fn, number=n) / n)
        finally:
            store.close()
    for name, seconds in best.items():
        print(f"{name}: {seconds * 1e6:.2f} us")


if __name__ == "__main__":
    main()
