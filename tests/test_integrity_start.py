"""The start-up checks of ``integrity.py``, against real daemons on damaged
data dirs: a truncated ``data.mdb`` is refused with exit status 4 and a
message (it was a SIGBUS), a lost one beside a known store too (it started
empty), and a corrupt newest record starts the daemon read-only (it
refused to start)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_status import rpc_status
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

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_format
from lighthouse_store.testing import DaemonProcess

NO_PREALLOCATION = ["--preallocate", "0"]  # data.mdb ends at LMDB's last page


def _start_fails(daemon: DaemonProcess) -> subprocess.CompletedProcess[str]:
    """Run a daemon that should not get as far as serving (bounded)."""
    return subprocess.run(
        daemon.command(), capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


def _assert_refused(proc: subprocess.CompletedProcess[str], words: str) -> None:
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-2000:])  # never -7 (SIGBUS)
    assert '"ready"' not in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "lighthouse-store: the store is damaged: " in proc.stderr, proc.stderr[-2000:]
    assert words in proc.stderr, proc.stderr[-2000:]


def _stopped_store(factory: DaemonFactory, workers: int = 1) -> DaemonProcess:
    daemon = factory(extra_args=NO_PREALLOCATION, workers=workers)
    for i in range(20):
        append(daemon.stub(), f"s{i % 3}", events(20, data=b"x" * 300))
    assert daemon.stop() == 0
    return daemon


@pytest.mark.parametrize("cut", ["to 8KiB", "to half", "by 4KiB"])
def test_a_truncated_data_file_is_refused_not_a_sigbus(
    daemon_factory: DaemonFactory, workers: int, cut: str
) -> None:
    daemon = _stopped_store(daemon_factory, workers)
    data = lmdb_format.data_file(daemon.data_dir)
    size = data.stat().st_size
    os.truncate(data, {"to 8KiB": 8192, "to half": size // 2, "by 4KiB": size - 4096}[cut])
    _assert_refused(_start_fails(daemon), "the file was truncated")


@pytest.mark.parametrize("loss", ["data.mdb deleted", "data.mdb emptied", "lmdb/ removed"])
def test_a_lost_data_file_beside_a_known_store_is_refused(
    daemon_factory: DaemonFactory, loss: str
) -> None:
    daemon = _stopped_store(daemon_factory)
    data = lmdb_format.data_file(daemon.data_dir)
    if loss == "data.mdb deleted":
        data.unlink()
    elif loss == "data.mdb emptied":
        os.truncate(data, 0)
    else:
        shutil.rmtree(data.parent)
    proc = _start_fails(daemon)
    _assert_refused(proc, "its data is lost")
    assert "restore" in proc.stderr


def test_another_stores_data_file_is_refused(daemon_factory: DaemonFactory) -> None:
    ours, theirs = _stopped_store(daemon_factory), _stopped_store(daemon_factory)
    shutil.copy(lmdb_format.data_file(theirs.data_dir), lmdb_format.data_file(ours.data_dir))
    _assert_refused(_start_fails(ours), "another store's file")


def test_a_store_from_before_store_ids_gets_one(daemon_factory: DaemonFactory) -> None:
    """A data dir with neither marker nor store id (made before both) starts
    as it did, and from then on is known."""
    daemon = _stopped_store(daemon_factory)
    before_marker = (daemon.data_dir / lmdb_format.MARKER).read_text().strip()
    (daemon.data_dir / lmdb_format.MARKER).unlink()
    import lmdb

    env = lmdb.open(str(lmdb_format.env_path(daemon.data_dir)), max_dbs=8, create=False)
    with env.begin(write=True) as txn:
        assert txn.delete(b"store_id", db=env.open_db(b"meta", txn=txn, create=False))
    env.close()
    daemon.start()
    assert len(read_all(daemon.stub())) == 400
    assert daemon.stop() == 0
    marker = (daemon.data_dir / lmdb_format.MARKER).read_text().strip()
    assert len(marker) == 32 and marker != before_marker
    lmdb_format.data_file(daemon.data_dir).unlink()
    _assert_refused(_start_fails(daemon), marker)


def test_a_corrupt_newest_record_starts_read_only(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    daemon = daemon_factory(workers=workers)
    stub = daemon.stub()
    first = events(3)
    append(stub, "a", first)
    append(stub, "b", events(2))
    written = read_all(stub)
    assert daemon.stop() == 0
    daemon.corrupt_record(5)
    daemon.start()  # it refused to start, exit 1
    stub = daemon.stub()
    log = daemon.log_text()
    assert "stored event at position 5 failed its checksum" in log
    assert "the store is read-only" in log
    assert read_stream(stub, "a") == written[:3]
    err = rpc_error(stub.GetEvent, pb.GetEventRequest(event_id=written[4].event_id))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert get_event(stub, written[3].event_id) == written[3]
    refused = rpc_error(stub.Append, append_request("c", events(1)))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
    info = error_info(refused)
    assert (info.reason, info.metadata["failure_class"]) == ("DEGRADED", "recoverable")
    assert info.metadata["position"] == "5"
    assert "read-only" in (refused.details() or "")
    status = rpc_status.from_call(refused)
    assert status is not None and any(d.type_url.endswith("RetryInfo") for d in status.details)
    assert read_all(stub, max_count=4) == written[:4]
    retry = append(stub, "a", first)  # an idempotent retry writes nothing: answered
    assert (retry.first_position, retry.last_position) == (1, 3)
    assert daemon.stop() == 0


def test_no_start_check_flags_a_sound_store(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """Restarts of a sound store, with and without the preallocator, stay writable."""
    daemon = _stopped_store(daemon_factory)
    for args in ([], NO_PREALLOCATION):
        daemon.extra_args = list(args)
        daemon.start()
        assert append(daemon.stub(), "s0", events(1)).first_position > 400
        assert daemon.stop() == 0
    assert "corruption" not in daemon.log_text()
