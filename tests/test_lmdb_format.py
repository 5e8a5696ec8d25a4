"""The on-disk format spec (``lmdb_format.py``) against the store, on real LMDB
files: a data dir written by hand from the spec's table opens and reads, the
table names every database, and a store of another format version is refused."""

from __future__ import annotations

import re
import struct
import uuid
import zlib
from pathlib import Path

import lmdb
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from test_store_contract import cmd, event

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_format, records
from lighthouse_store.config import Durability
from lighthouse_store.errors import StorageFailure
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendResult, ReadQuery

U64 = struct.Struct(">Q")  # the spec's integers, written out here on purpose
EVENT_ID = uuid.UUID("0190a0b0-0000-7000-8000-000000000001")


def _record(stream: str, revision: int, position: int, seconds: int) -> bytes:
    """A stored record built from the spec's words, not with records.py."""
    proposed = pb.ProposedEvent(
        event_id=str(uuid.UUID(int=EVENT_ID.int + position)), event_type="Hand", data=b"{}"
    ).SerializeToString()
    own = pb.RecordedEvent(
        stream=stream, revision=revision, position=position,
        recorded_at=Timestamp(seconds=seconds),
    ).SerializeToString()  # fmt: skip
    body = proposed + own
    return body + b"\x55" + zlib.crc32(body).to_bytes(4, "little")


def _write_by_hand(data_dir: Path) -> None:
    """Two events of stream "a" (stream_id 1) and a consumer's checkpoint."""
    env = lmdb.open(str(data_dir / "lmdb"), max_dbs=8, map_size=1 << 20)
    try:
        names = ["log", "streams", "stream_idx", "event_ids", "meta", "consumers"]
        db = {name: env.open_db(name.encode()) for name in names}
        with env.begin(write=True) as txn:
            for position in (1, 2):
                key = U64.pack(position)
                txn.put(key, _record("a", position - 1, position, 1000 + position), db=db["log"])
                txn.put(U64.pack(1) + U64.pack(position - 1), key, db=db["stream_idx"])
                txn.put(uuid.UUID(int=EVENT_ID.int + position).bytes, key, db=db["event_ids"])
            txn.put(b"a", U64.pack(1) + U64.pack(2) + U64.pack(2), db=db["streams"])
            txn.put(b"format", b"1", db=db["meta"])
            txn.put(b"next_stream_id", U64.pack(2), db=db["meta"])
            txn.put(b"billing", U64.pack(1), db=db["consumers"])
    finally:
        env.close()


def test_a_data_dir_written_from_the_spec_opens_reads_and_grows(tmp_path: Path) -> None:
    _write_by_hand(tmp_path)
    store = LmdbEventStore(tmp_path, map_size=1 << 20, durability=Durability.FSYNC)
    try:
        assert store.head_position() == 2 and store.get_checkpoint("billing") == 1
        page = store.read_page(ReadQuery(stream="a"), None, 10, 1 << 20)
        read = [records.decode(r) for r in page.records]
        assert [(e.position, e.revision) for e in read] == [(1, 0), (2, 1)]
        assert {e.event_type for e in read} == {"Hand"}
        assert store.get_event(uuid.UUID(int=EVENT_ID.int + 2).bytes) == page.records[1]
        more, new = store.commit([cmd("a", event()), cmd("b", event())])
        assert isinstance(more, AppendResult) and isinstance(new, AppendResult)
        assert (more.first_position, more.last_revision) == (3, 2)
        assert (new.first_position, new.last_revision) == (4, 0)
    finally:
        store.close()
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=8)
    try:
        with env.begin() as txn:
            state = txn.get(b"b", db=env.open_db(b"streams", txn=txn))
            assert state == U64.pack(2) + U64.pack(1) + U64.pack(4)  # the next stream_id
    finally:
        env.close()


def test_the_spec_table_names_every_database_the_store_has(tmp_path: Path) -> None:
    table = re.findall(r"^``(\w+)``  ", lmdb_format.__doc__ or "", re.MULTILINE)  # first column
    store = LmdbEventStore(tmp_path, map_size=1 << 20, durability=Durability.ASYNC)
    store.close()
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=8, readonly=True)
    try:
        with env.begin() as txn:
            created = sorted(key.decode() for key, _ in txn.cursor())
    finally:
        env.close()
    assert sorted(table) == created


def test_a_store_of_another_format_version_is_refused(tmp_path: Path) -> None:
    LmdbEventStore(tmp_path, map_size=1 << 20, durability=Durability.ASYNC).close()
    env = lmdb.open(str(tmp_path / "lmdb"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StorageFailure, match="unsupported storage format b'2'"):
        LmdbEventStore(tmp_path, map_size=1 << 20, durability=Durability.ASYNC)
