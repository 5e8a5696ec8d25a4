"""One bit-flipped store, checked as the corruption harness wants it
(``tests/test_corruption_harness.py``), in a process of its own so that a
crash in LMDB is a result, not the end of the test run.

``python tests/corruption_check.py DATA_DIR ORIGINAL_JSON`` prints one JSON
object: what ``verify`` found, and what the daemon's own read code (an
``LmdbEventStore`` opened as the daemon opens it) did with every read of the
original store: every ``$all`` page, every stream, every event by id.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from lighthouse_store import verify
from lighthouse_store.config import Durability
from lighthouse_store.errors import StoreError
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import ReadQuery


def check(data_dir: Path, original: dict[str, Any]) -> dict[str, Any]:
    report = verify.verify(data_dir)
    out: dict[str, Any] = {
        "verify": [f"{f.what}: {f.message}" for f in report.findings],
        "open_error": None,
        "errors": [],  # reads that failed with a domain error: detected
        "wrong": [],  # reads that returned something else than the original, without error
    }
    by_position = {int(p): bytes.fromhex(r) for p, r in original["records"].items()}
    try:
        store = LmdbEventStore(data_dir, map_size=1 << 26, durability=Durability.ASYNC)
    except StoreError as exc:
        out["open_error"] = exc.message
        return out
    try:
        _read(store, ReadQuery(), sorted(by_position), by_position, out, "$all")
        for stream, positions in original["streams"].items():
            _read(store, ReadQuery(stream=stream), positions, by_position, out, stream)
        for event_id, position in original["ids"].items():
            try:
                got = store.get_event(bytes.fromhex(event_id))
            except StoreError as exc:
                out["errors"].append(f"get_event {position}: {exc.message}")
                continue
            if got != by_position[position]:
                what = "missing" if got is None else "another record"
                out["wrong"].append(f"get_event {position}: {what}")
    finally:
        store.close()
    return out


def _read(
    store: LmdbEventStore,
    query: ReadQuery,
    positions: list[int],
    by_position: dict[int, bytes],
    out: dict[str, Any],
    name: str,
) -> None:
    got: list[bytes] = []
    cursor = None
    try:
        while True:
            page = store.read_page(query, cursor, 50, 1 << 20)
            got += page.records
            if page.cursor is None:
                break
            cursor = page.cursor
    except StoreError as exc:
        out["errors"].append(f"read {name}: {exc.message}")
        expected = [by_position[p] for p in positions[: len(got)]]
    else:
        expected = [by_position[p] for p in positions]
    if got != expected:
        out["wrong"].append(f"read {name}: {len(got)} records, not the original {len(expected)}")


if __name__ == "__main__":
    original = json.loads(Path(sys.argv[2]).read_text())
    json.dump(check(Path(sys.argv[1]), original), sys.stdout)
