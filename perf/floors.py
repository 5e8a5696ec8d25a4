"""Storage floor: raw in-process LMDB sync commits, with no daemon in the way.

The environment is opened as the daemon opens its own (``sync=True``,
``metasync=True``, ``readahead=False``) in a fresh directory on the same file
system as the daemon's data directory, and written with 8-byte big-endian keys
in ascending order and 1 KiB values, as the daemon's log is.
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path

import lmdb
from report import percentile

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
