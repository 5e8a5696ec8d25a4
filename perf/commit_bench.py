#!/usr/bin/env python3
"""Store commits with and without the zero-filled space ahead (``prealloc.py``).

    .venv/bin/python perf/commit_bench.py [--commits 1500] [--rounds 3] [--ids v7|v4]

In-process, no gRPC: ``LmdbEventStore.commit`` of one 100-event append (1 KiB
events, UUIDv7 ids as the client library makes them) at a time, on fresh
stores in a temp dir, in each durability: once with ``preallocate=0`` (LMDB grows the file itself)
and once with the daemon's default, alternating, ``--rounds`` times each.
Prints median commit times and the ratio; every loop is bounded by
``--commits`` and by a time cap. ``--ids v4`` gives the events random UUIDv4
ids instead, whose index entries land on scattered B-tree pages.

``--grow BLOCKS`` instead commits BLOCKS blocks of 2,000 such appends (200,000
events each) to one store, fsync durability, and prints the commit time per
block as the data file grows (``--preallocate-mib`` sets the preallocation,
default the daemon's; 0 = off): whether commits slow down as the store grows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from lighthouse_client import uuid7
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.config import Config, Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendCommand, Expected, NewEvent

TIME_CAP_S = 60.0


def append(payload: bytes, n: int = 100, ids: str = "v7") -> AppendCommand:
    events = []
    for _ in range(n):
        # v7 is the client library's default: time-ordered, so index inserts are local
        eid = uuid7() if ids == "v7" else str(uuid.uuid4())
        proposed = pb.ProposedEvent(event_id=eid, event_type="Bench", data=payload)
        events.append(NewEvent(bytes.fromhex(eid.replace("-", "")), proposed.SerializeToString()))
    return AppendCommand.of("bench", Expected(), events)


def median_commit_us(
    path: Path, durability: Durability, preallocate: int, commits: int, ids: str = "v7"
) -> float:
    payload = bytes(1024)
    commands = [append(payload, ids=ids) for _ in range(commits)]
    store = LmdbEventStore(
        path, map_size=8 << 30, durability=durability, preallocate=preallocate
    )
    try:
        if preallocate:  # start from a filled state, as a running daemon is
            end = time.monotonic() + 10
            while path.joinpath("lmdb", "data.mdb").stat().st_size < preallocate:
                if time.monotonic() > end:
                    break
                time.sleep(0.01)
        times = []
        stop = time.monotonic() + TIME_CAP_S
        for command in commands:
            t = time.perf_counter_ns()
            store.commit([command])
            times.append(time.perf_counter_ns() - t)
            if time.monotonic() > stop:
                break
        return statistics.median(times[len(times) // 10 :]) / 1e3
    finally:
        store.close()


def grow(path: Path, blocks: int, preallocate: int, ids: str = "v7") -> None:
    payload = bytes(1024)
    store = LmdbEventStore(
        path, map_size=64 << 30, durability=Durability.FSYNC, preallocate=preallocate
    )
    stop = time.monotonic() + blocks * TIME_CAP_S
    try:
        for block in range(1, blocks + 1):
            times = []
            for _ in range(2000):
                command = append(payload, ids=ids)
                t = time.perf_counter_ns()
                store.commit([command])
                times.append(time.perf_counter_ns() - t)
            times.sort()
            size = path.joinpath("lmdb", "data.mdb").stat().st_size
            print(
                f"{block * 200_000:>10,} events  data.mdb {size >> 20:>6,} MiB  commit "
                f"p50 {times[len(times) // 2] / 1e3:5.0f} us  "
                f"p99 {times[len(times) * 99 // 100] / 1e3:6.0f} us  "
                f"over 3 ms {sum(t > 3_000_000 for t in times):4d} of 2000",
                flush=True,
            )
            if time.monotonic() > stop:
                break
    finally:
        store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grow", type=int, default=0, metavar="BLOCKS")
    parser.add_argument("--preallocate-mib", type=int, default=Config().preallocate >> 20)
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--ids", choices=("v7", "v4"), default="v7", help="event ids (default v7)")
    args = parser.parse_args()
    default = Config().preallocate
    if args.grow:
        with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
            grow(Path(tmp) / "grow", min(args.grow, 100), args.preallocate_mib << 20, args.ids)
        return 0
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        for durability in Durability:
            runs: dict[int, list[float]] = {0: [], default: []}
            for r in range(args.rounds):
                for prealloc in runs:
                    path = Path(tmp) / f"{durability.value}-{prealloc}-{r}"
                    runs[prealloc].append(
                        median_commit_us(path, durability, prealloc, args.commits, args.ids)
                    )
            off, on = (statistics.median(runs[k]) for k in (0, default))
            print(
                f"{durability.value:5s} 100-event commit ({args.ids} ids), "
                f"median of {args.rounds} rounds: "
                f"growing the file {off:.0f} us, preallocated {on:.0f} us "
                f"({off / on:.2f}x faster)   runs: off {[round(x) for x in runs[0]]} "
                f"on {[round(x) for x in runs[default]]}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
