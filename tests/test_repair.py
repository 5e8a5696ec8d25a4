"""``lighthouse-store repair`` (``repair.py``) on real LMDB files: indexes rebuilt
from the log, an unreadable record quarantined behind a ``$corrupted``
placeholder, and a store another daemon holds left alone; then a real daemon
serves the repaired store."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import grpc
import lmdb
from support import (
    DaemonFactory,
    append,
    append_request,
    error_info,
    events,
    get_event,
    read_all,
    read_stream,
    rpc_error,
)
from test_verify import raw_store, run_tool, verify

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_format
from lighthouse_store.testing import DaemonProcess

U64 = struct.Struct(">Q")


def repair(data_dir: Path, *quarantine: int) -> tuple[int, dict[str, Any]]:
    args = [a for p in quarantine for a in ("--quarantine", str(p))]
    proc = run_tool("repair", "--data-dir", str(data_dir), *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


def _written(factory: DaemonFactory) -> tuple[DaemonProcess, list[pb.RecordedEvent]]:
    """A stopped daemon's store: 3 streams, 40 events (position p: stream s{(p-1)//2 % 3})."""
    daemon = factory()
    stub = daemon.stub()
    for i in range(20):
        append(stub, f"s{i % 3}", events(2, data=b"%d" % i))
    written = read_all(stub)
    assert daemon.stop() == 0
    return daemon, written


def _raw_record(data_dir: Path, position: int) -> bytes:
    env = lmdb.open(str(lmdb_format.env_path(data_dir)), readonly=True, max_dbs=8)
    try:
        with env.begin() as txn:
            raw = txn.get(U64.pack(position), db=env.open_db(b"log", txn=txn))
            assert raw is not None
            return bytes(raw)
    finally:
        env.close()


def test_repair_rebuilds_every_index_from_the_log(daemon_factory: DaemonFactory) -> None:
    daemon, written = _written(daemon_factory)
    with raw_store(daemon.data_dir) as (txn, dbs):
        txn.delete(struct.pack(">QQ", 1, 3), db=dbs["stream_idx"])  # s0's revision 3
        txn.put(struct.pack(">QQ", 2, 77), U64.pack(9), db=dbs["stream_idx"])  # a stray
        key = next(k for k, v in txn.cursor(db=dbs["event_ids"]) if v == U64.pack(11))
        txn.put(key, U64.pack(12), db=dbs["event_ids"])  # pointing at another event
        txn.drop(dbs["streams"], delete=False)  # every stream forgotten
    assert verify(daemon.data_dir)[0] == 1
    code, summary = repair(daemon.data_dir)
    assert code == 0 and summary["repaired"], summary
    assert (summary["head_position"], summary["streams"], summary["quarantined"]) == (40, 3, [])
    assert Path(summary["previous"]).is_dir()  # the old files, for the operator to delete
    assert verify(daemon.data_dir)[0] == 0
    daemon.start()
    stub = daemon.stub()
    assert read_all(stub) == written
    for s in ("s0", "s1", "s2"):
        assert read_stream(stub, s) == [e for e in written if e.stream == s]
    assert get_event(stub, written[10].event_id) == written[10]
    assert append(stub, "s0", events(1)).last_revision == 14


def test_an_unreadable_record_is_quarantined_behind_a_placeholder(
    daemon_factory: DaemonFactory,
) -> None:
    daemon, written = _written(daemon_factory)
    daemon.corrupt_record(40)  # the newest: the daemon would start read-only
    damaged = _raw_record(daemon.data_dir, 40)
    before = lmdb_format.data_file(daemon.data_dir).read_bytes()

    code, summary = repair(daemon.data_dir)  # not named: refused, nothing changed
    assert code == 1 and not summary["repaired"]
    assert summary["problems"] == [
        "position 40 is unreadable: name it with --quarantine 40 to replace it by a "
        "$corrupted placeholder (its bytes are saved first)"
    ]
    assert lmdb_format.data_file(daemon.data_dir).read_bytes() == before
    assert repair(daemon.data_dir, 39)[0] == 1  # a readable record is not quarantined

    code, summary = repair(daemon.data_dir, 40)
    assert code == 0, summary
    (entry,) = summary["quarantined"]
    victim = written[39]
    assert (entry["stream"], entry["revision"], entry["event_id"]) == (
        victim.stream, victim.revision, victim.event_id,
    )  # fmt: skip
    saved = daemon.data_dir / entry["file"]
    assert saved.read_bytes() == damaged
    assert entry["sha256"] == hashlib.sha256(damaged).hexdigest()
    assert verify(daemon.data_dir)[0] == 0

    daemon.start()
    stub = daemon.stub()
    got = read_all(stub)
    assert got[:39] == written[:39] and [e.position for e in got] == list(range(1, 41))
    placeholder = got[39]
    assert (placeholder.event_type, placeholder.stream, placeholder.revision) == (
        "$corrupted", victim.stream, victim.revision,
    )  # fmt: skip
    assert placeholder.event_id == victim.event_id
    assert placeholder.recorded_at == written[38].recorded_at
    assert json.loads(placeholder.data)["position"] == 40
    assert get_event(stub, victim.event_id) == placeholder
    # Its id stays taken: the original append, retried, is a conflict, not a copy.
    original = pb.ProposedEvent(
        event_id=victim.event_id, event_type=victim.event_type, data=victim.data,
        content_type=victim.content_type,
    )  # fmt: skip
    err = rpc_error(stub.Append, append_request(victim.stream, [original]))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err.details()
    assert error_info(err).reason == "EVENT_ID_CONFLICT"
    assert append(stub, "s0", events(1)).first_position == 41  # writable again


def test_a_missing_position_can_be_quarantined(daemon_factory: DaemonFactory) -> None:
    daemon, written = _written(daemon_factory)
    with raw_store(daemon.data_dir) as (txn, dbs):
        txn.delete(U64.pack(7), db=dbs["log"])
    code, summary = repair(daemon.data_dir, 7)
    assert code == 0, summary
    assert summary["quarantined"][0]["reason"] == "missing"
    assert summary["quarantined"][0]["file"] is None
    daemon.start()
    got = read_all(daemon.stub())
    assert [e.position for e in got] == list(range(1, 41))
    assert got[6].event_type == "$corrupted" and got[6].event_id == written[6].event_id


def test_repair_refuses_a_store_a_daemon_holds(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    append(daemon.stub(), "s", events(3))
    code, _ = repair(daemon.data_dir)
    assert code == 3
    proc = run_tool("repair", "--data-dir", str(daemon.data_dir))
    assert "already in use by another lighthouse-store" in proc.stderr
    assert not (daemon.data_dir / "lmdb.repair").exists()
    assert daemon.running() and len(read_all(daemon.stub())) == 3
