"""Storage floor: raw in-process LMDB sync commits, with no daemon in the way.

The environment is opened as the daemon opens its own (``sync=True``,
``metasync=True``, ``readahead=False``) in a fresh directory on the same file
system as the daemon's data directory, and written with 8-byte big-endian keys
in ascending order and 1 KiB values, as the daemon's log is. Before timing,
``data.mdb`` is zero-filled ahead of LMDB's pages by the daemon's own
preallocator, as far as the daemon keeps it (``--preallocate``, 64 MiB) plus
what the timed commits will write, so the floor's commits overwrite allocated
blocks as the daemon's do instead of growing the file (which makes each
fsync'd 100-put commit about 1.3x slower: ``lighthouse_store/prealloc.py``).
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import time
from pathlib import Path

import lmdb
from report import percentile

from lighthouse_store.config import Config
from lighthouse_store.prealloc import Preallocator

_KEY = struct.Struct(">Q")


def lmdb_commits(
    parent: Path,
    *,
    puts_per_commit: int,
    max_commits: int,
    time_cap_s: float,
    value_bytes: int = 1024,
    warmup_commits: int = 5,
) -> dict[str, float]:
    """Fsync'd commits of ``puts_per_commit`` puts each; rates and commit latency."""
    with tempfile.TemporaryDirectory(prefix="lmdb-floor-", dir=parent) as tmp:
        env = lmdb.open(
            str(Path(tmp) / "lmdb"),
            map_size=4 * 1024**3,
            sync=True,
            metasync=True,
            readahead=False,
        )
        try:
            _zero_fill(env, Path(tmp) / "lmdb" / "data.mdb",
                       (warmup_commits + max_commits) * puts_per_commit * value_bytes * 2)
            value = os.urandom(value_bytes)
            key = 0

            def commit() -> None:
                nonlocal key
                with env.begin(write=True) as txn:
                    for _ in range(puts_per_commit):
                        key += 1
                        txn.put(_KEY.pack(key), value, append=True)

            for _ in range(warmup_commits):
                commit()
            lat: list[int] = []
            clock = time.monotonic_ns
            start = clock()
            deadline = start + int(time_cap_s * 1e9)
            while len(lat) < max_commits and clock() < deadline:
                t0 = clock()
                commit()
                lat.append(clock() - t0)
            elapsed_s = (clock() - start) / 1e9
        finally:
            env.close()
    commits = len(lat)
    return {
        "commits": commits,
        "commits_per_s": commits / elapsed_s,
        "events_per_s": commits * puts_per_commit / elapsed_s,
        "commit_p50_ms": percentile(lat, 50) / 1e6,
        "commit_p99_ms": percentile(lat, 99) / 1e6,
    }


def _zero_fill(env: lmdb.Environment, data_file: Path, growth: int) -> None:
    """Zero-fill ``data_file`` past LMDB's pages: the daemon's preallocation
    (``Config.preallocate``) plus ``growth``, the most the timed commits add."""
    page = int(env.stat()["psize"])
    filler = Preallocator(
        data_file,
        ahead=Config().preallocate + growth,
        used_bytes=lambda: (int(env.info()["last_pgno"]) + 1) * page,
        file_lock=threading.Lock(),
        sync=True,
    )
    try:
        filler.fill()
    finally:
        filler.close()
