"""Disk and map pressure (``space.py``, ``lmdb_txn.py``, the map's growth in
``lmdb_store.py``, the preallocator's bounds in ``prealloc.py``), on real
small file systems the tests mount (``volumes.py``: a size-limited tmpfs and
a loop-mounted ext4 image; skipped with a message where this machine cannot
mount): fill, refuse, free, resume, and every acknowledged event read back."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from scrape import get_json, samples, value, wait_for
from store_process import StoreProcess
from support import (
    DaemonFactory,
    append,
    error_info,
    events,
    expect_code,
    read_all,
    spread_stubs,
)
from test_store_contract import cmd, event
from volumes import KINDS, MIB, fill_to, mounted, used_ratio

from lighthouse_client import NewEvent, StoreClient
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.config import Durability
from lighthouse_store.errors import StorageFull, StoreError
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.space import SpaceGuard
from lighthouse_store.store import AppendResult, ReadQuery

NO_PREALLOC = ["--preallocate", "0"]


def retry_delay(err: grpc.RpcError) -> float:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("no RetryInfo in the error details")


class Acked:
    """Appends that were acknowledged, to check against what is read back."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def append(self, stub: Any, n: int = 20, size: int = 1000) -> pb.AppendResponse:
        evs = events(n, data=os.urandom(size))
        resp = append(stub, "s", evs)
        self.ids += [e.event_id for e in evs]
        return resp

    def check(self, stub: Any) -> None:
        got = read_all(stub)
        assert [e.event_id for e in ours(got)] == self.ids
        assert [e.position for e in got] == list(range(1, len(got) + 1))


def ours(got: list[Any]) -> list[Any]:
    """The test's events: the daemon records its level changes in ``$system``
    (disk use past the warning mark is one)."""
    return [e for e in got if e.stream != "$system"]


def refused_append(stub: Any, acked: Acked, attempts: int = 200) -> grpc.RpcError:
    """Append until storage refuses (the guard reads statvfs every 0.1 s)."""
    for _ in range(attempts):
        try:
            acked.append(stub, n=1, size=100)
        except grpc.RpcError as err:
            return err
        threading.Event().wait(0.05)
    raise AssertionError(f"appends were never refused in {attempts} attempts")


def assert_storage_full(err: grpc.RpcError) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    info = error_info(err)
    assert (info.reason, info.metadata["failure_class"]) == ("STORAGE_FULL", "recoverable")
    assert retry_delay(err) > 0


@pytest.mark.parametrize(
    ("kind", "workers"), [("tmpfs", 1), ("ext4", 1), ("tmpfs", 2)],
    ids=["tmpfs", "ext4", "tmpfs-2-workers"],
)  # fmt: skip
def test_a_filling_volume_refuses_appends_and_takes_them_again_once_freed(
    tmp_path: Path, daemon_factory: DaemonFactory, kind: str, workers: int
) -> None:
    with mounted(kind, 24, tmp_path) as volume:
        d = daemon_factory(volume / "data", extra_args=NO_PREALLOC, workers=workers)
        (stub,) = spread_stubs(d, 1)
        acked = Acked()
        for _ in range(5):
            acked.append(stub)
        assert get_json(d, "/health")[0] == 200
        ballast = fill_to(volume, 0.96)
        assert used_ratio(volume) >= 0.95

        assert_storage_full(refused_append(stub, acked))
        wait_for("writes blocked", lambda: value(samples(d), "lighthouse_writes_blocked"),
                 lambda v: v == 1)  # fmt: skip
        _, body = wait_for("health", lambda: get_json(d, "/health"), lambda r: r[0] == 503)
        assert body["checks"]["storage"]["status"] == "fail"
        assert len(ours(read_all(stub))) == len(acked.ids)  # reads go on

        ballast.unlink()  # below 90%: taken again, with no append needed to notice
        wait_for("writes unblocked", lambda: value(samples(d), "lighthouse_writes_blocked"),
                 lambda v: v == 0)  # fmt: skip
        wait_for("health", lambda: get_json(d, "/health"), lambda r: r[0] == 200)
        acked.append(stub)
        acked.check(stub)
        d.stop()
        d.start()
        acked.check(d.stub())


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_during_a_commit_is_a_recoverable_refusal_that_writes_nothing(
    tmp_path: Path, daemon_factory: DaemonFactory, kind: str
) -> None:
    """The guard is set to refuse only at 100%, so the commit itself meets
    ENOSPC (or the EIO of LMDB's short write): STORAGE_FULL, recoverable,
    never INTERNAL; nothing of the batch is written, nothing acknowledged is
    lost or torn, before and after a restart."""
    marks = ["--disk-block-ratio", "1", "--disk-resume-ratio", "1"]
    with mounted(kind, 24, tmp_path) as volume:
        d = daemon_factory(volume / "data", extra_args=[*NO_PREALLOC, *marks])
        stub = d.stub()
        acked = Acked()
        for _ in range(5):
            acked.append(stub)
        ballast = fill_to(volume, 1.0)
        with ballast.open("r+b") as f:  # leave 1 MiB: too little for the next append
            f.truncate(max(0, ballast.stat().st_size - MIB))
        err = expect_code(
            grpc.StatusCode.RESOURCE_EXHAUSTED, append, stub, "s", events(100, data=bytes(20_000))
        )
        assert_storage_full(err)
        assert "nothing of the append was written" in (err.details() or "")  # the commit's
        assert len(ours(read_all(stub))) == len(acked.ids)
        acked.check(stub)

        ballast.unlink()
        wait_for("an append", lambda: _try(acked, stub), lambda ok: ok)
        acked.check(stub)
        d.stop()
        assert "INTERNAL" not in d.log_text()
        d.start()
        acked.check(d.stub())


def _try(acked: Acked, stub: Any) -> bool:
    try:
        acked.append(stub)
    except grpc.RpcError as err:
        assert_storage_full(err)
        return False
    return True


def test_the_map_grows_online_past_its_first_size(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    d = daemon_factory(
        extra_args=["--map-size", "1MiB", "--max-map-size", "256MiB", *NO_PREALLOC],
        workers=workers,
    )
    stubs = spread_stubs(d, 2)
    acked = Acked()
    for i in range(12):  # ~5 MB, from both workers in turn
        acked.append(stubs[i % 2], n=100, size=4000)
    for stub in stubs:  # every worker reads everything, whoever wrote it
        acked.check(stub)
    d.stop()
    d.start()
    acked.check(d.stub())
    assert "map grown" in d.log_text()


def test_the_map_grows_under_concurrent_readers_and_stops_at_its_limit(tmp_path: Path) -> None:
    store = LmdbEventStore(
        tmp_path, map_size=MIB, max_map_size=16 * MIB, durability=Durability.ASYNC
    )
    stop = threading.Event()
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            # A pause between reads, as reader threads serving calls have: three
            # threads spinning on the GIL starve the writer's return from
            # py-lmdb calls for seconds (CPython's 5 ms switch interval).
            while not stop.wait(0.0005):
                store.read_page(ReadQuery(), None, 50, 1 << 20)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    written = 0
    result: AppendResult | StoreError | None = None
    try:
        for _ in range(120):  # up to ~24 MB: past several growths, then refused
            batch = cmd("s", *(event(data=os.urandom(4000)) for _ in range(50)))
            try:
                (result,) = store.commit([batch])
            except StorageFull as full:  # LMDB found the map full at its limit
                result = full
            if not isinstance(result, AppendResult):
                break
            written += 50
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not failures, failures
        assert store.map_size == 16 * MIB and written > 1000
        assert isinstance(result, StorageFull)  # at the limit, by the guard or by LMDB
        assert len(_read_everything(store)) == written
    finally:
        store.close()


def _read_everything(store: LmdbEventStore) -> list[bytes]:
    out: list[bytes] = []
    cursor = None
    while True:
        page = store.read_page(ReadQuery(), cursor, 1000, 1 << 30)
        out += page.records
        if page.cursor is None:
            return out
        cursor = page.cursor


def test_a_store_adopts_a_map_another_process_grew(tmp_path: Path) -> None:
    """MDB_MAP_RESIZED: another process (a 256 MiB map, as another worker
    that grew it would have) wrote past this one's 1 MiB map; this one's next
    read and write transactions adopt the size and go on."""
    small = LmdbEventStore(tmp_path, map_size=MIB, durability=Durability.ASYNC)
    other = StoreProcess(tmp_path)
    try:
        big = [event(data=os.urandom(8000)) for _ in range(400)]  # ~3 MB
        (result,) = other.call("commit", [cmd("s", *big)], {})
        assert isinstance(result, AppendResult) and result.last_position == 400
        assert small.last_position() == 400  # a read transaction: adopted
        assert small.map_size > MIB
        (mine,) = small.commit([cmd("s", event())])  # a write transaction too
        assert isinstance(mine, AppendResult) and mine.first_position == 401
        assert len(_read_everything(small)) == 401
    finally:
        other.close()
        small.close()


def test_the_space_guard_refuses_at_the_block_mark_and_resumes_below_the_resume_mark(
    tmp_path: Path,
) -> None:
    ratio = [0.5]
    guard = SpaceGuard(
        tmp_path, lambda free: ratio[0], block_ratio=0.95, resume_ratio=0.90, interval_s=0.0
    )
    seen = []
    for r in (0.5, 0.949, 0.95, 0.93, 0.90, 0.899, 0.94):
        ratio[0] = r
        seen.append(guard.refusal() is not None)
    assert seen == [False, False, True, True, True, False, False]


def test_the_preallocator_stays_within_the_map(tmp_path: Path) -> None:
    store = LmdbEventStore(
        tmp_path, map_size=2 * MIB, max_map_size=2 * MIB, durability=Durability.ASYNC,
        preallocate=64 * MIB,
    )  # fmt: skip
    try:
        assert store._prealloc is not None
        store._prealloc.fill()  # returns once the file is as long as it may be
        assert (tmp_path / "lmdb" / "data.mdb").stat().st_size <= 2 * MIB
    finally:
        store.close()


def test_the_preallocator_never_takes_the_volume_past_the_warning_mark(tmp_path: Path) -> None:
    with mounted("tmpfs", 20, tmp_path) as volume:
        fill_to(volume, 0.31)
        store = LmdbEventStore(
            volume / "data", map_size=1 << 30, durability=Durability.FSYNC,
            preallocate=64 * MIB,
        )  # fmt: skip
        try:
            assert store._prealloc is not None
            store._prealloc.fill()
            assert 0.7 < used_ratio(volume) <= 0.8 + 1 / os.statvfs(volume).f_blocks
        finally:
            store.close()


def test_the_client_library_retries_a_full_store_until_space_is_freed(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """STORAGE_FULL is recoverable: the client backs off (no sooner than the
    RetryInfo) and its append goes through once an operator frees space,
    within the call's deadline."""
    with mounted("tmpfs", 24, tmp_path) as volume:
        d = daemon_factory(volume / "data", extra_args=NO_PREALLOC)
        acked = Acked()
        acked.append(d.stub())
        ballast = fill_to(volume, 0.96)
        assert_storage_full(refused_append(d.stub(), acked))
        freed = threading.Timer(1.5, ballast.unlink)
        freed.start()
        try:
            with StoreClient(d.address, timeout=60) as client:
                result = client.append("s", NewEvent("T", b"{}"))
        finally:
            freed.join()
        stored = ours(read_all(d.stub()))
        assert [e.position for e in stored][-1] == result.first_position
        assert len(stored) == len(acked.ids) + 1
        assert not ballast.exists()  # it went through after the space was freed
