"""The zero-filled space ahead of LMDB's write head (``prealloc.py``), on real
LMDB files: it is kept, it never clobbers a committed page, and its failures
never reach a commit."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from store_process import StoreProcess
from support import DaemonFactory, new_id
from test_store_contract import cmd, event

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_txn, prealloc
from lighthouse_store.config import Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.prealloc import Preallocator
from lighthouse_store.store import AppendResult, ReadQuery

MIB = 1024 * 1024


def data_file(path: Path) -> Path:
    return path / "lmdb" / "data.mdb"


def wait_until(predicate: object, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def read_all(store: LmdbEventStore) -> list[pb.RecordedEvent]:
    out: list[pb.RecordedEvent] = []
    cursor = None
    while True:
        page = store.read_page(ReadQuery(), cursor, 1000, 1 << 30)
        out += [pb.RecordedEvent.FromString(r) for r in page.records]
        if page.cursor is None:
            return out
        cursor = page.cursor


@pytest.mark.parametrize("durability", list(Durability))
def test_the_file_is_kept_zero_filled_ahead_of_the_used_pages(
    tmp_path: Path, durability: Durability
) -> None:
    store = LmdbEventStore(tmp_path, map_size=1 << 30, durability=durability, preallocate=4 * MIB)
    try:
        wait_until(lambda: data_file(tmp_path).stat().st_size >= store.used_bytes() + 4 * MIB)
        payload = os.urandom(1000)
        for _ in range(30):  # ~3 MiB of events: into the zeros and past them
            store.commit([cmd("s", *(event(data=payload) for _ in range(100)))])
        used = store.used_bytes()
        assert used > 3 * MIB
        wait_until(lambda: data_file(tmp_path).stat().st_size >= store.used_bytes() + 4 * MIB)
        with data_file(tmp_path).open("rb") as f:  # everything past the used pages is zeros
            f.seek(used)
            assert f.read().count(0) == data_file(tmp_path).stat().st_size - used
    finally:
        store.close()


def test_filling_while_commits_run_never_clobbers_a_committed_page(tmp_path: Path) -> None:
    """A filler that writes a small step every millisecond, racing a writer
    that keeps growing the file: every event reads back intact (each record's
    checksum is verified on read) after a reopen without the filler."""
    store = LmdbEventStore(tmp_path, map_size=1 << 30, durability=Durability.ASYNC)
    filler = Preallocator(
        data_file(tmp_path),
        ahead=256 * 1024,
        used_bytes=store.used_bytes,
        file_lock=store._file_lock,
        sync=False,
        step=8 * 1024,
        interval_s=0.0005,
    ).start()
    written: list[bytes] = []
    try:
        for i in range(80):
            batch = [event(data=os.urandom(900 + i)) for _ in range(50)]
            store.commit([cmd(f"s-{i % 3}", *batch)])
            written += [e.proposed for e in batch]
    finally:
        filler.close()
        store.close()
    assert data_file(tmp_path).stat().st_size > 0
    reopened = LmdbEventStore(tmp_path, map_size=1 << 30, durability=Durability.ASYNC)
    try:
        events = read_all(reopened)
        assert [e.position for e in events] == list(range(1, len(written) + 1))
        assert [pb.ProposedEvent.FromString(p).data for p in written] == [e.data for e in events]
    finally:
        reopened.close()


def test_while_the_filler_holds_lmdbs_write_lock_no_other_process_commits(
    tmp_path: Path,
) -> None:
    """With several workers the filler runs in the supervisor and the commits
    in other processes: LMDB's own write lock (an empty write transaction)
    keeps them apart. A worker's commit sent while the filler holds it is
    not answered until the filler lets go."""
    LmdbEventStore(tmp_path, map_size=1 << 30, durability=Durability.ASYNC).close()  # create it
    worker = StoreProcess(tmp_path)
    supervisor = LmdbEventStore(
        tmp_path, map_size=1 << 30, durability=Durability.ASYNC, shared=True
    )
    answered_while_held: list[bool] = []

    def used_bytes() -> int:  # fill() calls it with the lock held
        if not answered_while_held:
            worker.send("commit", [cmd("s")], {})
            answered_while_held.append(worker.answered(timeout=0.5))
        return supervisor.used_bytes()

    filler = Preallocator(
        data_file(tmp_path),
        ahead=MIB,
        used_bytes=used_bytes,
        file_lock=lmdb_txn.WriteLock(supervisor._env),
        sync=False,
    )
    try:
        assert worker.call("head_position") == 0  # open, and ready to commit
        filler.fill()
        assert answered_while_held == [False], "a commit ran while the filler held the lock"
        (result,) = worker.receive()
        assert isinstance(result, AppendResult) and result.first_position == 1
    finally:
        filler.close()
        supervisor.close()
        worker.close()
    assert len(read_all_reopened(tmp_path)) == 1


def test_a_shared_store_preallocates_under_lmdbs_write_lock(tmp_path: Path) -> None:
    store = LmdbEventStore(
        tmp_path, map_size=1 << 30, durability=Durability.ASYNC, shared=True, preallocate=MIB
    )
    try:
        assert store._prealloc is not None
        assert isinstance(store._prealloc._lock, lmdb_txn.WriteLock)
        wait_until(lambda: data_file(tmp_path).stat().st_size >= store.used_bytes() + MIB)
    finally:
        store.close()


def test_a_write_transaction_holds_the_file_lock_from_begin_to_end(tmp_path: Path) -> None:
    """LMDB may write pages before the commit (a transaction with very many
    dirty pages spills some early), so the filler must be kept out of the
    whole transaction, not just its commit."""
    store = LmdbEventStore(tmp_path, map_size=1 << 30, durability=Durability.ASYNC)
    seen: list[bool] = []
    apply, write = store._apply, store._write

    def watched_apply(*args: Any) -> Any:
        seen.append(store._file_lock.locked())
        return apply(*args)

    def watched_write(*args: Any) -> Any:
        seen.append(store._file_lock.locked())
        return write(*args)

    store._apply = watched_apply  # type: ignore[method-assign,assignment]
    store._write = watched_write  # type: ignore[method-assign,assignment]
    try:
        store.commit([cmd("s", event()), cmd("t", event())])
    finally:
        store.close()
    assert seen == [True, True, True]
    assert not store._file_lock.locked()


def test_a_failing_fill_is_logged_once_and_commits_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LmdbEventStore(tmp_path, map_size=1 << 30, durability=Durability.FSYNC)
    calls = threading.Semaphore(0)

    def disk_full() -> int:
        calls.release()
        raise OSError(errno.ENOSPC, "No space left on device")

    filler = Preallocator(
        data_file(tmp_path),
        ahead=MIB,
        used_bytes=disk_full,
        file_lock=store._file_lock,
        sync=True,
        interval_s=0.001,
        retry_after_s=0.001,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="lighthouse_store.prealloc"):
            filler.start()
            for _ in range(3):  # three failed attempts, one warning
                assert calls.acquire(timeout=10)
            assert filler.failed
            result = store.commit([cmd("s", event())])
        assert not isinstance(result[0], Exception)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "cannot preallocate the data file (No space left on device); retrying later"
        ]
    finally:
        filler.close()
        store.close()
    assert len(read_all_reopened(tmp_path)) == 1


def read_all_reopened(path: Path) -> list[pb.RecordedEvent]:
    store = LmdbEventStore(path, map_size=1 << 30, durability=Durability.FSYNC)
    try:
        return read_all(store)
    finally:
        store.close()


def test_a_daemon_keeps_its_data_file_preallocated(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(extra_args=["--preallocate", "3MiB"])
    stub = daemon.stub()
    payload = os.urandom(1000)
    for _ in range(20):  # ~2 MiB of events
        stub.Append(
            pb.AppendRequest(
                stream="s",
                events=[
                    pb.ProposedEvent(event_id=new_id(), event_type="T", data=payload)
                    for _ in range(100)
                ],
            ),
            timeout=30,
        )

    def trailing_zeros() -> int:
        data = data_file(daemon.data_dir).read_bytes()
        return len(data) - len(data.rstrip(b"\0"))

    wait_until(lambda: trailing_zeros() >= 3 * MIB)
    assert len(read_all_via(stub)) == 2000


def read_all_via(stub: Any) -> list[pb.RecordedEvent]:
    pages = stub.Read(pb.ReadRequest(stream="s"), timeout=30)
    return [e for page in pages for e in page.events]


def test_the_fill_step_shrinks_when_writes_hold_the_lock_long_and_grows_back(
    tmp_path: Path,
) -> None:
    """A slow write (fresh memory on the dev VM) keeps commits waiting on the lock,
    so the next step is smaller; fast writes bring it back. The clock is the
    only fake here: the writes are real."""
    path = tmp_path / "file"
    path.write_bytes(b"")
    now = [0.0]
    tick = [0.002]  # every write seems to take 2 ms

    def clock() -> float:
        now[0] += tick[0]  # the time between two reads is one write
        return now[0]

    filler = Preallocator(
        path,
        ahead=4 * MIB,
        used_bytes=lambda: 0,
        file_lock=threading.Lock(),
        sync=False,
        clock=clock,
    )
    try:
        filler.fill()
        assert filler._step == prealloc.MIN_STEP
        tick[0] = 0.0001  # fast writes now: back up to the full step
        filler._ahead = 16 * MIB
        filler.fill()
        assert filler._step == prealloc.STEP
        assert path.stat().st_size >= 16 * MIB
        assert path.read_bytes().count(0) == path.stat().st_size
    finally:
        filler.close()


def test_an_idle_filler_checks_less_and_less_often(tmp_path: Path) -> None:
    """With nothing to fill, each check waits twice as long as the last (up to
    ``idle_interval_s``): an idle daemon's filler does not poll 50 times a
    second. Counted in checks, which a loaded machine can only make fewer."""
    path = tmp_path / "data.mdb"
    path.write_bytes(bytes(4096))
    checks = 0

    def used_bytes() -> int:
        nonlocal checks
        checks += 1
        return 0  # the file is always far enough ahead: nothing to fill

    filler = Preallocator(
        path, ahead=4096, used_bytes=used_bytes, file_lock=threading.Lock(), sync=False,
        interval_s=0.001, idle_interval_s=0.064,
    ).start()  # fmt: skip
    try:
        time.sleep(0.5)  # 500 checks at the busy interval; about 13 backing off
    finally:
        filler.close()
    assert 1 <= checks < 60
