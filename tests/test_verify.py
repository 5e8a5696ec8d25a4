"""``lighthouse-store verify`` (``verify.py``) on real LMDB files, damaged by hand
in each way it checks, run as the command an operator runs; and beside a
running daemon under appends, whose lock it does not need."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest
from support import DaemonFactory, append, events, new_event
from test_store_contract import cmd, event

from lighthouse_store import lmdb_format
from lighthouse_store.config import Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.testing import corrupt_record

U64 = struct.Struct(">Q")


def run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``lighthouse-store ARGS`` as a process (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "lighthouse_store", *args], capture_output=True, text=True,
        timeout=120, check=False, env=env or dict(os.environ),
    )  # fmt: skip


def verify(data_dir: Path) -> tuple[int, dict[str, Any]]:
    proc = run_tool("verify", "--data-dir", str(data_dir))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def make_store(data_dir: Path, streams: int = 3, appends: int = 30) -> None:
    """A closed store: ``appends`` appends of two events, over ``streams``
    streams (position p is in stream s{((p - 1) // 2) % streams}), and a consumer at 5."""
    store = LmdbEventStore(data_dir, map_size=1 << 26, durability=Durability.ASYNC)
    try:
        for i in range(appends):
            store.commit([cmd(f"s{i % streams}", event(), event())])
        store.commit([], {"billing": 5})
    finally:
        store.close()


@contextmanager
def raw_store(data_dir: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A write transaction on the store's LMDB files, and its databases by name."""
    env = lmdb.open(str(lmdb_format.env_path(data_dir)), max_dbs=8, create=False)
    try:
        with env.begin(write=True) as txn:
            names = ["log", "streams", "stream_idx", "event_ids", "meta", "consumers"]
            yield txn, {n: env.open_db(n.encode(), txn=txn, create=False) for n in names}
    finally:
        env.close()


def _findings(report: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(f["what"], f["position"]) for f in report["findings"]]


def test_a_clean_store_verifies(tmp_path: Path) -> None:
    make_store(tmp_path)
    code, report = verify(tmp_path)
    assert code == 0, report
    assert report["ok"] and report["findings"] == [] and report["head_position"] == 60
    assert report["checked"] == {
        "records": 60, "streams": 3, "stream_idx": 60, "event_ids": 60, "consumers": 1
    }  # fmt: skip
    assert len(report["store_id"]) == 32


def _drop_log_entry(txn: Any, db: dict[str, Any]) -> None:
    txn.delete(U64.pack(20), db=db["log"])


def _drop_stream_index_entry(txn: Any, db: dict[str, Any]) -> None:
    txn.delete(struct.pack(">QQ", 1, 3), db=db["stream_idx"])  # s0's revision 3: position 8


def _stray_stream_index_entry(txn: Any, db: dict[str, Any]) -> None:
    txn.put(struct.pack(">QQ", 2, 99), U64.pack(9), db=db["stream_idx"])


def _event_id_points_elsewhere(txn: Any, db: dict[str, Any]) -> None:
    key = next(k for k, v in txn.cursor(db=db["event_ids"]) if v == U64.pack(11))
    txn.put(key, U64.pack(12), db=db["event_ids"])


def _stream_state_off(txn: Any, db: dict[str, Any]) -> None:
    sid, _, last = struct.unpack(">QQQ", txn.get(b"s1", db=db["streams"]))
    txn.put(b"s1", struct.pack(">QQQ", sid, 7, last), db=db["streams"])


def _consumer_past_head(txn: Any, db: dict[str, Any]) -> None:
    txn.put(b"billing", U64.pack(61), db=db["consumers"])


def _store_id_lost(txn: Any, db: dict[str, Any]) -> None:
    txn.delete(b"store_id", db=db["meta"])


DAMAGE: dict[str, tuple[Callable[[Any, dict[str, Any]], None], list[tuple[str, int | None]]]] = {
    # Its index entries are left pointing at nothing:
    "log entry missing": (_drop_log_entry, [("missing", 20), ("index", 20), ("index", 20)]),
    "stream index entry missing": (_drop_stream_index_entry, [("index", 8)]),
    "stray stream index entry": (_stray_stream_index_entry, [("index", 9)]),
    "event id points elsewhere": (_event_id_points_elsewhere, [("index", 11)]),
    "stream state off": (_stream_state_off, [("streams", 58)]),
    "consumer past the head": (_consumer_past_head, [("consumers", None)]),
    "store id lost": (_store_id_lost, [("meta", None)]),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_each_kind_of_damage_is_a_finding(tmp_path: Path, case: str) -> None:
    make_store(tmp_path)
    damage, expected = DAMAGE[case]
    with raw_store(tmp_path) as (txn, dbs):
        damage(txn, dbs)
    code, report = verify(tmp_path)
    assert code == 1 and not report["ok"]
    assert _findings(report) == expected, report["findings"]


def test_a_checksum_is_one_finding_however_many_revisions_follow(tmp_path: Path) -> None:
    make_store(tmp_path)
    corrupt_record(tmp_path, 7)  # in s0, with later s0 events after it
    code, report = verify(tmp_path)
    assert code == 1
    assert _findings(report) == [("checksum", 7)]
    assert report["findings"][0]["message"] == "stored event at position 7 failed its checksum"


@pytest.mark.parametrize("size", ["8KiB", "half"])
def test_a_truncated_file_is_a_finding_not_a_crash(tmp_path: Path, size: str) -> None:
    make_store(tmp_path)
    data = lmdb_format.data_file(tmp_path)
    os.truncate(data, 8192 if size == "8KiB" else data.stat().st_size // 2)
    code, report = verify(tmp_path)
    assert code == 1
    ((what, _),) = _findings(report)
    assert what == "file" and "truncated" in report["findings"][0]["message"]


def test_meta_pages_that_disagree_are_a_finding(tmp_path: Path) -> None:
    """A damaged transaction id in a meta page would have LMDB open an older
    state of the store without a word."""
    make_store(tmp_path)
    data = lmdb_format.data_file(tmp_path)
    with open(data, "r+b") as f:
        f.seek(144)  # the first meta page's transaction id
        (txnid,) = struct.unpack("<Q", f.read(8))
        f.seek(144)
        f.write(struct.pack("<Q", txnid ^ 0x100))
    code, report = verify(tmp_path)
    assert code == 1
    assert ("file", None) in _findings(report)
    assert any("meta pages disagree" in f["message"] for f in report["findings"])


def test_an_empty_dir_is_no_store(tmp_path: Path) -> None:
    code, report = verify(tmp_path)
    assert code == 1 and _findings(report) == [("file", None)]


def test_verify_beside_a_running_daemon_under_appends(daemon_factory: DaemonFactory) -> None:
    """The daemon holds the data dir's lock and keeps appending; verify reads
    one consistent state as an LMDB reader, and the daemon never notices."""
    daemon = daemon_factory()
    stub = daemon.stub()
    for i in range(20):
        append(stub, f"s{i % 4}", events(25))
    stop = threading.Event()
    appended: list[int] = []

    def load() -> None:
        writer = daemon.stub()
        for i in range(2000):  # bounded; stopped as soon as verify is done
            if stop.is_set():
                return
            done = append(writer, f"live-{i % 3}", new_event("L", b"x" * 200))
            appended.append(done.last_position)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        code, report = verify(daemon.data_dir)
    finally:
        stop.set()
        thread.join(60)
    assert code == 0, report["findings"]
    assert report["head_position"] >= 500
    assert report["checked"]["records"] == report["head_position"]
    assert appended, "no append ran beside verify"
    assert daemon.running()
    assert append(stub, "after", events(1)).first_position > max(appended)
