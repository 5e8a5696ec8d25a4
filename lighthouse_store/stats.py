"""``lighthouse-store stats``: what a store holds, as one JSON object.

Read as an LMDB reader (beside a running daemon or offline, no lock), in
one read transaction, from LMDB's own counts: it costs a few page reads
whatever the store's size, never a walk of the log.

==========================  ==================================================
key                         what
==========================  ==================================================
``store_id``                the store's id (``lmdb_format.py``)
``head_position``           the last position; ``events`` is the log's count
``streams``, ``consumers``  how many
``bytes.file``              the size of ``data.mdb`` (past ``used``: space the
                            preallocator keeps ahead, ``prealloc.py``)
``bytes.used``              what LMDB uses of it, free pages included
``bytes.databases``         the pages of each database (B-tree and overflow)
``map.size``, ``map.used``  LMDB's map size (as the daemon last set it) and
                            ``bytes.used`` over it
``oldest_record_time``,     ``recorded_at`` of the first and last record
``newest_record_time``      (RFC 3339, UTC), null when the log is empty or
                            that record fails its checksum
==========================  ==================================================
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from lighthouse_store import integrity, lmdb_format, lmdb_reads, lmdb_txn, records
from lighthouse_store.errors import StoreError


def main(data_dir: Path) -> int:
    """Print the stats (a store that cannot be read raises: ``cli.py`` says why)."""
    json.dump(stats(data_dir), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def stats(data_dir: Path) -> dict[str, Any]:
    integrity.check_files(data_dir)
    data = lmdb_format.data_file(data_dir)
    if not data.exists():
        raise StoreError(f"{data_dir} holds no store (no {data})")
    env = lmdb_txn.open_reader(lmdb_format.env_path(data_dir))
    try:
        with lmdb_txn.read_transaction(env) as txn:
            dbs = lmdb_format.open_databases(env, txn)
            info, page = env.info(), int(env.stat()["psize"])
            used = (int(info["last_pgno"]) + 1) * page
            sizes = {
                name: _pages(txn.stat(db)) * page
                for name, db in (
                    ("log", dbs.log), ("streams", dbs.streams),
                    ("stream_idx", dbs.stream_index), ("event_ids", dbs.event_ids),
                    ("meta", dbs.meta), ("consumers", dbs.consumers),
                )
            }  # fmt: skip
            cur = txn.cursor(db=dbs.log)
            oldest = _time(cur.value()) if cur.first() else None
            newest = _time(cur.value()) if cur.last() else None
            return {
                "store_id": integrity.stored_id(txn, dbs),
                "head_position": lmdb_reads.last_position(txn, dbs),
                "events": int(txn.stat(dbs.log)["entries"]),
                "streams": int(txn.stat(dbs.streams)["entries"]),
                "consumers": int(txn.stat(dbs.consumers)["entries"]),
                "bytes": {"file": data.stat().st_size, "used": used, "databases": sizes},
                "map": {
                    "size": int(info["map_size"]),
                    "used": round(used / int(info["map_size"]), 6),
                },
                "oldest_record_time": oldest,
                "newest_record_time": newest,
            }
    finally:
        env.close()


def _pages(stat: dict[str, int]) -> int:
    return int(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])


def _time(raw: bytes) -> str | None:
    if not records.checksum_ok(raw):
        return None
    ns = records.recorded_at_ns(records.decode(raw))
    at = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"
