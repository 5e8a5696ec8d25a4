"""LMDB driver errors become domain errors in one place (``lmdb_txn.py``), on
real LMDB files: through the store's write path and open path, and in the
write-transaction context manager itself."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import lmdb
import pytest
from test_store_contract import cmd, event

from lighthouse_store import lmdb_txn
from lighthouse_store.config import Durability
from lighthouse_store.errors import StorageFailure, StorageFull
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendResult

PACKAGE = Path(lmdb_txn.__file__).parent
TOO_LONG = "k" * 600  # over LMDB's 511-byte key limit: BadValsizeError


def _small_store(path: Path) -> LmdbEventStore:
    return LmdbEventStore(
        path, map_size=256 * 1024, max_map_size=256 * 1024, durability=Durability.FSYNC
    )


def test_a_full_map_fails_an_append_with_storage_full_and_the_store_goes_on(
    tmp_path: Path,
) -> None:
    store = _small_store(tmp_path)
    try:
        with pytest.raises(StorageFull, match="restart with a larger --max-map-size"):
            store.commit([cmd("s", *[event(data=bytes(8000)) for _ in range(100)])])
        assert store.head_position() == 0 and not store._file_lock.locked()
        (ok,) = store.commit([cmd("s")])  # the failed transaction was aborted
        assert isinstance(ok, AppendResult) and ok.first_position == 1
    finally:
        store.close()


def test_another_driver_error_in_a_commit_is_a_storage_failure_naming_only_its_class(
    tmp_path: Path,
) -> None:
    store = _small_store(tmp_path)
    try:
        with pytest.raises(StorageFailure) as failed:
            store.commit([cmd("s")], {TOO_LONG: 1})  # a consumer name LMDB cannot key
        assert failed.value.message == "storage write failed: BadValsizeError"
        assert isinstance(failed.value.__cause__, lmdb.BadValsizeError)
        assert store.head_position() == 0 and store.last_position() == 0  # nothing written
        assert not store._file_lock.locked()
    finally:
        store.close()


def test_a_file_that_is_not_lmdb_fails_the_open_with_the_drivers_words(tmp_path: Path) -> None:
    (tmp_path / "lmdb").mkdir()
    (tmp_path / "lmdb" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    with pytest.raises(StorageFailure, match=r"cannot open the LMDB environment: .*MDB_INVALID"):
        _small_store(tmp_path)


def test_a_write_transaction_commits_or_aborts_and_translates(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), map_size=64 * 1024)
    lock = threading.Lock()
    try:
        with lmdb_txn.write_transaction(env, lock) as txn:
            txn.put(b"kept", b"1")
        with pytest.raises(StorageFull), lmdb_txn.write_transaction(env, lock) as txn:
            txn.put(b"lost", b"1")
            for i in range(1000):
                txn.put(b"%d" % i, bytes(1000))
        failure = pytest.raises(StorageFailure, match="BadValsizeError")
        with failure, lmdb_txn.write_transaction(env, lock) as txn:
            txn.put(TOO_LONG.encode(), b"1")
        with pytest.raises(KeyError), lmdb_txn.write_transaction(env, lock) as txn:
            txn.put(b"lost", b"1")
            raise KeyError("not a driver error: raised as it is")
        assert not lock.locked()
        with env.begin() as txn:
            assert [k for k, _ in txn.cursor()] == [b"kept"]
    finally:
        env.close()


def test_nothing_else_in_the_package_handles_driver_errors() -> None:
    handlers = {
        path.name
        for path in PACKAGE.glob("*.py")
        if re.search(r"except[^:\n]*\blmdb\.", path.read_text())
    }
    assert handlers == {"lmdb_txn.py"}
