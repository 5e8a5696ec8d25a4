"""The background scrub (``scrub.py``): one tick at a time on real LMDB files
(it scrubs only while nothing commits, a batch per tick, round and round),
and in real daemons, where it finds an old corrupt record that the start-up
check does not reach."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from support import DaemonFactory, append, append_request, error_info, events, rpc_error
from test_store_contract import cmd, event

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.config import Durability
from lighthouse_store.corruption import Finding
from lighthouse_store.integrity import NEWEST_CHECKED
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.scrub import Scrubber
from lighthouse_store.testing import corrupt_record

OLD = NEWEST_CHECKED + 50  # records, so that position 3 is older than the start-up check reads


def _store(path: Path) -> LmdbEventStore:
    return LmdbEventStore(path, map_size=1 << 26, durability=Durability.ASYNC)


def test_it_scrubs_only_while_nothing_commits_a_batch_per_tick(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for _ in range(5):
        store.commit([cmd("s", *[event() for _ in range(20)])])
    store.close()
    corrupt_record(tmp_path, 57)
    store = _store(tmp_path)  # position 57 is among the newest: degraded, still readable
    found: list[Finding] = []
    scrubber = Scrubber(store, records_per_second=300, on_finding=found.append)  # 30 a tick
    try:
        assert not scrubber.step()  # the first tick only learns LMDB's transaction id
        assert scrubber.step() and scrubber._after == 30
        store.commit([], {"consumer": 1})  # a commit: this tick is not idle
        assert not scrubber.step() and scrubber._after == 30
        assert scrubber.step() and scrubber._after == 60
        assert [(f.what, f.position) for f in found] == [("checksum", 57)]
        assert scrubber.step() and scrubber._after == 90
        assert scrubber.step() and scrubber._after == 0 and scrubber.passes == 1  # round again
        assert scrubber.step() and scrubber._after == 30
        assert len(found) == 1
    finally:
        store.close()


def test_a_daemon_scrubs_an_old_corrupt_record_and_turns_read_only(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    append(daemon.stub(), "s", events(OLD))
    assert daemon.stop() == 0
    daemon.corrupt_record(3)
    daemon.extra_args = ["--scrub-records-per-second", "100000"]
    daemon.start()
    stub = daemon.stub()
    deadline = time.monotonic() + 60
    while "stored event at position 3 failed its checksum" not in daemon.log_text():
        assert time.monotonic() < deadline, "the scrub found nothing"
        time.sleep(0.1)
    # The level takes effect once its $system event is committed, just after the finding.
    while stub.GetInfo(pb.GetInfoRequest()).degradation_level != "degraded":
        assert time.monotonic() < deadline, "the finding never made the store read-only"
        time.sleep(0.05)
    err = rpc_error(stub.Append, append_request("t", events(1)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    info = error_info(err)
    assert (info.reason, info.metadata["position"]) == ("DEGRADED", "3")


def test_with_workers_the_supervisor_scrubs(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2)
    append(daemon.stub(), "s", events(OLD))
    assert daemon.stop() == 0
    daemon.corrupt_record(3)
    daemon.extra_args = ["--scrub-records-per-second", "100000"]
    daemon.start()
    deadline = time.monotonic() + 60
    while "the scrub found corruption" not in daemon.log_text():
        assert time.monotonic() < deadline, "the supervisor's scrub found nothing"
        time.sleep(0.1)
    assert "stored event at position 3 failed its checksum" in daemon.log_text()


def test_no_scrub_when_turned_off(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.commit([cmd("s", event())])
    scrubber = Scrubber(store, records_per_second=0, on_finding=lambda f: None).start()
    try:
        assert not scrubber._thread.is_alive()
    finally:
        scrubber.close()
        store.close()
