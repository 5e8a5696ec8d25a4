"""In-process replay rate of ``LmdbEventStore.read_page``, for two source trees.

    python perf/read_bench.py --base /path/to/other/tree --rounds 8

Builds one store of 100,000 events of 1 KiB (4 streams), then alternates,
round by round, a process importing the daemon from ``--base`` and one
importing it from this tree, each replaying ``$all`` and one stream with
the in-memory tail off (every record read from LMDB and its checksum
checked); prints the medians. Each process opens its own copy of the store.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _make(data: Path) -> None:
    from lighthouse_proto.v1 import store_pb2 as pb
    from lighthouse_store.config import Durability
    from lighthouse_store.lmdb_store import LmdbEventStore
    from lighthouse_store.store import AppendCommand, Expected

    store = LmdbEventStore(data, map_size=1 << 30, durability=Durability.ASYNC)
    try:
        for i in range(200):
            ids = [uuid.uuid4() for _ in range(500)]
            proposed = tuple(
                pb.ProposedEvent(
                    event_id=str(e), event_type="T", data=b"x" * 1000
                ).SerializeToString()
                for e in ids
            )
            store.commit([AppendCommand(f"s{i % 4}", Expected(), tuple(e.bytes for e in ids),
                                        proposed, 0)])  # fmt: skip
    finally:
        store.close()


def _replay(data: Path) -> tuple[float, float]:
    from lighthouse_store.config import Durability
    from lighthouse_store.lmdb_store import LmdbEventStore
    from lighthouse_store.store import ReadQuery

    store = LmdbEventStore(data, map_size=1 << 30, durability=Durability.ASYNC, tail_bytes=0)

    def rate(query: ReadQuery) -> float:
        cursor, n, started = None, 0, time.perf_counter()
        while True:
            page = store.read_page(query, cursor, 1000, 1 << 20)
            n += len(page.records)
            if page.cursor is None:
                return n / (time.perf_counter() - started)
            cursor = page.cursor

    try:
        return rate(ReadQuery()), rate(ReadQuery(stream="s1"))
    finally:
        store.close()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":  # python read_bench.py --child ROOT DATA
        sys.path.insert(0, sys.argv[2])
        print(*_replay(Path(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other source tree")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = Path(tmp) / "made"
        sys.path.insert(0, str(HERE))
        _make(made)
        rates: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
        for name in rates:
            shutil.copytree(made, Path(tmp) / name)
        for _ in range(args.rounds):
            for root, name in ((args.base, "base"), (HERE, "this")):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(root), str(Path(tmp) / name)],
                    capture_output=True, text=True, check=True,
                ).stdout.split()  # fmt: skip
                rates[name].append((float(out[0]), float(out[1])))
        for name, got in rates.items():
            all_rate = statistics.median(r[0] for r in got)
            stream_rate = statistics.median(r[1] for r in got)
            print(f"{name}: $all {all_rate:,.0f} ev/s, one stream {stream_rate:,.0f} ev/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
