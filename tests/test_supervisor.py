"""``--workers 2``: a supervisor and two worker processes on one port and one
store (``supervisor.py``), against the real daemon: the port is shared, the
start-up checks run before any worker, a killed worker is restarted and
loses nothing acknowledged, a killed supervisor takes its workers with it,
SIGTERM drains every worker, and a commit in one worker wakes the
subscribers of the other."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import grpc
import psutil
import pytest
from crash_harness import Acked, Load, verify_after_crash
from subscriber import Subscriber
from support import (
    DaemonFactory,
    ThreadErrors,
    append,
    events,
    head,
    info,
    new_event,
    read_stream,
    spread_channels,
    wait_until,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.cpus import usable_cpus
from lighthouse_store.faults import DROP_WAKEUPS, EXIT_AFTER_COMMITS, EXIT_CODE
from lighthouse_store.testing import DaemonProcess

WORKERS = 2


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    out = []
    for line in daemon.log_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def worker_of(stub: Any) -> int:
    return int(info(stub).worker_pid)


def test_workers_share_one_port_and_one_store(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(workers=WORKERS)
    assert d.ready["workers"] == WORKERS and d.ready["pid"] == d.pid
    workers = d.worker_pids()
    assert len(workers) == WORKERS
    # The kernel gives each new connection to one of the listening workers.
    seen: set[int] = set()
    for _ in range(100):
        ch = d.connect()
        seen.add(worker_of(pb_grpc.EventStoreServiceStub(ch)))
        ch.close()
        if seen == set(workers):
            break
    assert seen == set(workers)
    # Both serve the same store, each call on the worker its connection reached.
    a, b = (d.stub(pid) for pid in workers)
    assert (worker_of(a), worker_of(b)) == tuple(workers)
    assert append(a, "s", events(3)).last_position == 3
    assert append(b, "s", events(2), expected=2).last_position == 5
    assert head(a) == head(b) == 5  # GetInfo reads the head from storage
    assert [e.position for e in read_stream(a, "s")] == [1, 2, 3, 4, 5]
    assert d.stop() == 0


def test_one_worker_is_one_process_and_zero_is_one_per_usable_cpu(
    daemon_factory: DaemonFactory,
) -> None:
    single = daemon_factory(workers=1)
    assert single.worker_pids() == [] and "workers" not in single.ready
    assert worker_of(single.stub()) == single.pid == single.ready["pid"]
    default = daemon_factory(workers=0)
    n = usable_cpus()
    assert len(default.worker_pids()) == (n if n > 1 else 0)
    assert default.ready.get("workers", 1) == n


def _run(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A daemon that should not get as far as serving (bounded)."""
    return subprocess.run(
        [*daemon.command(), *args], capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


@pytest.mark.parametrize("case", ["locked", "damaged", "port-taken", "port-of-workers"])
def test_start_up_checks_fail_fast_before_any_worker_starts(
    daemon_factory: DaemonFactory, case: str
) -> None:
    first = daemon_factory(workers=WORKERS)
    append(first.stub(), "s", events(3))
    second = daemon_factory(start=False, workers=WORKERS)
    plain = socket.socket()
    try:
        if case == "locked":  # another daemon has the data dir: 3
            second.data_dir = first.data_dir
            expected, message = 3, "already in use by another lighthouse-store"
        elif case == "damaged":  # data.mdb lost beside a known store: 4 (integrity.py)
            assert first.stop() == 0
            (first.data_dir / "lmdb" / "data.mdb").unlink()
            second.data_dir = first.data_dir
            expected, message = 4, "the store is damaged: "
        elif case == "port-taken":  # something else listens on the port: 2
            plain.bind(("127.0.0.1", 0))
            plain.listen()
            second.port = plain.getsockname()[1]
            expected, message = 2, "cannot listen on"
        else:  # the workers of another daemon share the port (SO_REUSEPORT): 2
            second.port = first.port
            expected, message = 2, "cannot listen on"
        proc = _run(second)
    finally:
        plain.close()
    assert proc.returncode == expected, proc.stderr[-3000:]
    assert '"ready"' not in proc.stdout
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "worker" not in proc.stderr, "a worker started before the checks were done"


def test_a_killed_worker_is_logged_and_restarted(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(workers=WORKERS)
    victim, survivor = d.worker_pids()
    append(d.stub(victim), "s", events(2))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(d.worker_pids()) == WORKERS and victim not in d.worker_pids(),
               "the supervisor starts a new worker")  # fmt: skip
    (restarted,) = set(d.worker_pids()) - {survivor}
    exits = [e for e in log_lines(d) if e.get("pid") == victim and "exit" in e]
    assert len(exits) == 1, exits
    assert exits[0]["level"] == "error" and exits[0]["exit"] == -signal.SIGKILL
    assert "was killed by SIGKILL" in exits[0]["message"]
    assert "restarting it in" in exits[0]["message"]
    # The new worker serves the same store, on the same port.
    wait_until(lambda: any(e.get("message") == f"worker {exits[0]['worker']} (pid {restarted})"
                           " serving" for e in log_lines(d)), "the new worker serves")  # fmt: skip
    stub = d.stub(restarted)
    assert append(stub, "s", events(1), expected=1).last_position == 3
    assert d.running() and d.stop() == 0


class RetryingLoad:
    """Appenders that retry an append (the same request, so the same event
    ids) on UNAVAILABLE, as the client library does: a worker that dies
    under them costs a retry, never an event."""

    def __init__(self, channels: list[grpc.Channel], appends: int) -> None:
        self.channels = channels
        self.appends = appends
        self.acked: dict[str, Acked] = {}
        self.sent: dict[str, tuple[str, pb.ProposedEvent]] = {}
        self.retries = 0
        self.lock = threading.Lock()
        self.errors = ThreadErrors()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(len(channels))]

    def start(self) -> RetryingLoad:
        for th in self.threads:
            th.start()
        return self

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _run(self, writer: int) -> None:
        stub = pb_grpc.EventStoreServiceStub(self.channels[writer])
        try:
            for i in range(self.appends):
                stream = f"w{writer}-{i % 3}"
                batch = [new_event("Load", f"{writer}/{i}/{k}".encode() * 20) for k in range(5)]
                with self.lock:
                    self.sent.update((e.event_id, (stream, e)) for e in batch)
                resp = self._append(stub, pb.AppendRequest(stream=stream, events=batch))
                with self.lock:
                    for k, ev in enumerate(batch):
                        self.acked[ev.event_id] = Acked(
                            ev, stream, resp.first_position + k, resp.last_revision - 4 + k
                        )
        except BaseException as exc:
            self.errors.add(exc)

    def _append(self, stub: Any, request: pb.AppendRequest) -> pb.AppendResponse:
        for _ in range(200):
            try:
                response: pb.AppendResponse = stub.Append(request, timeout=30)
                return response
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                with self.lock:
                    self.retries += 1
                time.sleep(0.05)
        raise AssertionError("an append kept failing with UNAVAILABLE")

    def join(self) -> None:
        for th in self.threads:
            th.join(240)
            assert not th.is_alive(), "an appender hung"
        for ch in self.channels:
            ch.close()
        self.errors.raise_first()


@pytest.mark.slow
def test_kill9_of_a_worker_under_load_loses_no_acknowledged_event(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(workers=WORKERS)
    victim, survivor = d.worker_pids()
    load = RetryingLoad(spread_channels(d, 4), appends=300).start()  # two on each worker
    try:
        wait_until(lambda: load.acked_count() >= 500 or not any(t.is_alive() for t in load.threads),
                   "appends acknowledged before the kill", timeout=120)  # fmt: skip
        os.kill(victim, signal.SIGKILL)
    finally:
        load.join()
    assert load.retries > 0, "no appender noticed the worker die"
    wait_until(lambda: len(d.worker_pids()) == WORKERS and victim not in d.worker_pids(),
               "the supervisor starts a new worker")  # fmt: skip
    assert survivor in d.worker_pids()
    stub = d.stub()
    got = verify_after_crash(stub, load.acked, load.sent)
    assert len(load.acked) == len(got) == 4 * 300 * 5  # every append went through, once
    # Both workers take appends again, the new one included.
    for pid in d.worker_pids():
        assert append(d.stub(pid), "after", events(1)).last_position > len(got)
    assert d.stop() == 0


def test_kill9_of_the_supervisor_takes_every_worker_with_it(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(workers=WORKERS)
    append(d.stub(), "s", events(3))
    workers = d.worker_pids()
    assert len(workers) == WORKERS
    port = d.port
    try:
        assert d.kill9() == -signal.SIGKILL
        wait_until(lambda: not any(alive(pid) for pid in workers), "every worker dies")
    finally:
        for pid in workers:  # never leave one behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    # Nothing holds the port or the data dir: a new daemon starts on both.
    d.start()
    assert d.port == port and len(d.worker_pids()) == WORKERS
    assert not set(d.worker_pids()) & set(workers)
    stub = d.stub()
    assert head(stub) == 3
    assert append(stub, "s", events(1)).last_position == 4
    assert d.stop() == 0


@pytest.mark.slow
def test_sigterm_drains_every_worker(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory(workers=WORKERS)
    workers = d.worker_pids()
    load = Load(d, max_appends=3000)
    load.start([("t1", 1), ("t2", 1), ("t3", 20), ("t4", 1)])  # spread over both workers
    wait_until(lambda: load.acked_count() >= 300, "appends acknowledged before SIGTERM", 60)
    code = d.stop()
    load.stop.set()
    load.join()
    assert code == 0
    assert not any(alive(pid) for pid in workers)
    lines = log_lines(d)
    for index in range(WORKERS):  # each drained as a single process does, and said so
        said = [e["message"] for e in lines if e.get("worker") == index and "exit" not in e]
        assert "shutting down: draining in-flight calls" in said, said[-5:]
        assert any(m.startswith("stopped; head position") for m in said), said[-5:]
    assert set(load.failures) <= {grpc.StatusCode.UNAVAILABLE}, load.failures
    d.start()
    verify_after_crash(d.stub(), load.acked, load.sent)


def test_a_commit_in_one_worker_wakes_a_subscriber_on_the_other(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(workers=WORKERS)
    appender, subscriber = d.worker_pids()
    writer = d.stub(appender)
    sub = Subscriber(d.stub(subscriber), pb.SubscribeOptions(from_end={}))
    try:
        sub.next_kind("caught_up_position")
        for i in range(1, 21):
            append(writer, "s", events(1))
            # Nothing commits on the subscriber's worker: only a wake-up from
            # the other worker can make it look (heartbeats find no new head).
            got, _ = sub.messages_until(1, timeout=20)
            assert [e.position for e in got] == [i]
    finally:
        sub.close()


def serving_pid(daemon: DaemonProcess, index: int) -> int | None:
    """The pid of the worker with ``index`` that last said it serves."""
    pids = [int(m.split("(pid ")[1].split(")")[0]) for e in log_lines(daemon)
            if (m := e.get("message", "")).startswith(f"worker {index} (pid ")
            and m.endswith(" serving")]  # fmt: skip
    return pids[-1] if pids else None


def test_a_worker_that_missed_a_wake_up_still_answers_with_the_head_on_disk(
    daemon_factory: DaemonFactory,
) -> None:
    # Wake-ups are hints (a full queue drops one): GetInfo's head and where
    # a subscription from the end starts are read from storage.
    d = daemon_factory(workers=WORKERS, env={**os.environ, DROP_WAKEUPS: "1"})
    appender, other = d.worker_pids()
    append(d.stub(appender), "s", events(3))
    stub = d.stub(other)
    assert head(stub) == 3
    sub = Subscriber(stub, pb.SubscribeOptions(from_end={}))
    try:
        assert sub.next_kind("confirmation").confirmation.start_after_position == 3
        assert sub.next_kind("caught_up_position").caught_up_position == 3
        # (The fault is on: a live event from the other worker does not reach it.)
        append(d.stub(appender), "s", events(1))
        assert "events" not in [m.WhichOneof("kind") for m in sub.quiet_for(0.5)]
    finally:
        sub.close()


def test_a_worker_that_keeps_dying_is_restarted_later_each_time(
    daemon_factory: DaemonFactory,
) -> None:
    # The exit-after-commit fault makes every worker die right after its
    # first commit: each restart of worker 0 waits twice as long as the last.
    d = daemon_factory(workers=WORKERS, env={**os.environ, EXIT_AFTER_COMMITS: "1"})
    delays: list[float] = []
    for _ in range(4):
        pid = serving_pid(d, 0)
        assert pid is not None
        ch = d.connect(pid)
        try:
            pb_grpc.EventStoreServiceStub(ch).Append(
                pb.AppendRequest(stream="s", events=events(1)), timeout=30
            )
        except grpc.RpcError:
            pass  # the worker died before it answered: that is the fault
        finally:
            ch.close()

        def exits(dead: int = pid) -> list[dict[str, Any]]:
            return [e for e in log_lines(d) if e.get("pid") == dead and "exit" in e]

        wait_until(lambda: bool(exits()), "the supervisor notices the exit")
        (exit_line,) = exits()
        assert exit_line["worker"] == 0 and exit_line["exit"] == EXIT_CODE
        delays.append(float(exit_line["message"].split("restarting it in ")[1].split(" s")[0]))

        def replaced(dead: int = pid) -> bool:
            return serving_pid(d, 0) not in (None, dead)

        wait_until(replaced, "worker 0 serves again")
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert d.stop() == 0
