"""The perf harness's peer, UmaDB (``perf/peers.py``, ``perf/peer_umadb.py``),
and the measurements through each system's own Python client
(``perf/user_clients.py``): a real UmaDB server and a real daemon on
127.0.0.1, tiny counts, no speed asserted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import peer_umadb
import peers
from pool import ClientPool, arrangement
from workloads import EVENT_BYTES, EVENT_TYPE, Result, Spec

MISSING = peers.missing("umadb")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"UmaDB peer: {MISSING}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def umadb_server(tmp_path: Path) -> Iterator[peers.PeerServer]:
    srv = peers.server("umadb", tmp_path)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def umadb_module() -> Any:
    """The umadb client library, imported here; it sets a SIGINT handler on
    import, which is put back."""
    handler = signal.getsignal(signal.SIGINT)
    import umadb

    signal.signal(signal.SIGINT, handler)
    return umadb


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    p = ClientPool(1)
    try:
        yield p
    finally:
        p.close()


def test_umadb_listens_on_loopback_alone_on_a_fresh_dir_and_stops_by_pid(tmp_path: Path) -> None:
    srv = peers.server("umadb", tmp_path)
    srv.start()
    try:
        pid = srv.pid
        host, port = srv.address.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert peers.listening_ports(pid) == [("127.0.0.1", int(port))]
        assert any((tmp_path / "umadb-data").iterdir())  # its database, in the fresh dir
        info = srv.info()
        assert info["server_version"] == peer_umadb.VERIFIED_VERSION
        assert info["durability_verified"] is True
        assert info["pid"] == pid and info["address"] == srv.address
    finally:
        srv.stop()
    assert not _alive(pid)
    # Never on a data dir that is already there.
    again = peers.server("umadb", tmp_path)
    try:
        with pytest.raises(FileExistsError):
            again.start()
    finally:
        again.stop()


def test_no_umadb_setting_comes_from_the_callers_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umadb_module: Any
) -> None:
    """An API key in UMADB_API_KEY would make the server refuse the harness's
    clients: the server gets none of the UMADB_* variables."""
    monkeypatch.setenv("UMADB_API_KEY", "umadb:perf-test-key-not-for-the-server")
    srv = peers.server("umadb", tmp_path)
    srv.start()
    try:
        client = umadb_module.Client(f"http://{srv.address}")
        client.append([umadb_module.Event("T", b"x")])
        assert client.head() == 1
    finally:
        srv.stop()
    assert os.environ["UMADB_API_KEY"] == "umadb:perf-test-key-not-for-the-server"


def _check(results: list[Result], calls: int, events: int) -> None:
    for r in results:
        assert (r.errors, r.first_error) == (0, "")
        assert r.calls == calls and r.events == events
        assert len(r.latencies_ns) == calls and r.end_ns > r.start_ns > 0


def test_both_systems_append_and_replay_through_their_own_clients(
    tmp_path: Path, umadb_server: peers.PeerServer, pool: ClientPool, umadb_module: Any
) -> None:
    """The same specs through umadb.Client (threads) and our AsyncStoreClient
    (asyncio tasks); the events land as the mapping in peer_umadb.py says."""
    ours = DaemonProcess(tmp_path / "ours", log_path=tmp_path / "ours.log").start()
    try:
        for system, address, pid, mode in (
            ("umadb", umadb_server.address, umadb_server.pid, "threads"),
            ("lighthouse", ours.address, ours.pid, "asyncio"),
        ):
            append = Spec("append", address, 20.0, 4, warmup_calls=1, events_per_call=3,
                          stream="s", client=system)  # fmt: skip
            run = pool.run(append, arrangement(mode, 2), server_pid=pid)
            _check(run.results, calls=4, events=12)
            # 2 clients x 5 appends x 3 events = 30: the replay tops it up to 150 first
            replay = Spec("replay", address, 20.0, 1, replay_count=150, client=system)
            _check(pool.run(replay, arrangement(mode, 1), server_pid=pid).results, 1, 150)

        client = umadb_module.Client(f"http://{umadb_server.address}")
        events = client.read(start=1, limit=30).collect_with_head()[0]
        # each client's stream name is its events' tag
        assert sorted(tag for e in events for tag in e.event.tags) == ["s-0"] * 15 + ["s-1"] * 15
        for e in events:
            assert e.event.event_type == EVENT_TYPE and len(e.event.data) == EVENT_BYTES
            assert e.event.uuid is not None
        assert client.head() == 30 + 200  # topped up in 100-event appends

        stub = ours.stub()
        for stream in ("s-0", "s-1"):
            read = list(stub.Read(pb.ReadRequest(stream=stream), timeout=10))
            got = [e for page in read for e in page.events]
            assert len(got) == 15
            assert {(e.event_type, len(e.data)) for e in got} == {(EVENT_TYPE, EVENT_BYTES)}
        assert stub.GetInfo(pb.GetInfoRequest(), timeout=10).head_position == 30 + 200
    finally:
        ours.stop()


@pytest.mark.parametrize(
    ("spec", "mode", "error"),
    [
        # nothing listens on port 9: umadb.Client connects when it is made
        (Spec("append", "127.0.0.1:9", 5.0, 3, warmup_calls=1, client="umadb"), "threads",
         "TransportError"),
        # an asyncio client that fails before it is ready
        (Spec("get_event", "127.0.0.1:9", 5.0, 3, client="lighthouse"), "asyncio",
         "not measured through a user client"),
    ],
)  # fmt: skip
def test_a_client_that_fails_before_it_is_ready_fails_the_run_with_its_error(
    pool: ClientPool, spec: Spec, mode: str, error: str
) -> None:
    with pytest.raises(RuntimeError, match="client process failed") as failed:
        pool.run(spec, arrangement(mode, 2))
    assert error in str(failed.value)


def _traced(pid: int) -> bool:
    """Every thread of ``pid`` has a tracer."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for t in tasks:
            status = Path(f"/proc/{pid}/task/{t}/status").read_text()
            tracer = next(x for x in status.splitlines() if x.startswith("TracerPid:"))
            if tracer.split()[1] == "0":
                return False
    except (OSError, StopIteration):
        return False
    return bool(tasks)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_umadb_syncs_to_disk_for_every_append(
    tmp_path: Path, umadb_server: peers.PeerServer
) -> None:
    """What peer_umadb.py says of its durability, checked on the installed
    version: N sequential appends (each waits for its answer) make at least N
    fdatasync/fsync calls in the server (0.7.8: two per commit)."""
    out = tmp_path / "strace.txt"
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o", str(out),
         "-p", str(umadb_server.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _traced(umadb_server.pid):
            if tracer.poll() is not None or time.monotonic() > deadline:
                assert tracer.stderr is not None
                pytest.skip(f"strace cannot attach here: {tracer.stderr.read()[-500:]!r}")
            time.sleep(0.05)
        driver = peer_umadb.driver(umadb_server.address, "durable")
        try:
            appends = 20
            for _ in range(appends):
                driver.append(driver.batch(1))
            assert driver.head() == appends
        finally:
            driver.close()
    finally:
        tracer.send_signal(signal.SIGINT)  # strace detaches and exits
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(10)
    syncs = [line for line in out.read_text().splitlines() if "sync(" in line]
    assert len(syncs) >= appends, out.read_text()[-2000:]
