"""Operator signals against real daemons (signals.py): SIGHUP reopens the log
file and reloads, SIGUSR1 dumps every thread's stack; both keep serving, and a
supervisor forwards them to every worker."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import grpc
from support import DaemonFactory, append, events, expect_code, head, wait_until

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess


def lines_of(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def processes(daemon: DaemonProcess) -> set[int | None]:
    """What the lines of each process carry as ``worker``: None for the
    supervisor (or the single process), the index for each worker."""
    return {None, *range(daemon.workers)} if daemon.workers > 1 else {None}


def servers(daemon: DaemonProcess) -> set[int | None]:
    """Like :func:`processes`, the ones that serve gRPC: not the supervisor."""
    return set(range(daemon.workers)) if daemon.workers > 1 else {None}


def said(path: Path, daemon: DaemonProcess, message: str, by: str = "every process") -> bool:
    """Every process of ``daemon`` (``by="every server"``: every one that
    serves gRPC) has logged a line starting with ``message``."""
    seen = {e.get("worker") for e in lines_of(path) if e["message"].startswith(message)}
    return seen == (processes(daemon) if by == "every process" else servers(daemon))


def test_sighup_reopens_the_log_file_and_keeps_serving(
    daemon_factory: DaemonFactory, workers: int, tmp_path: Path
) -> None:
    log = tmp_path / "store.log"
    daemon = daemon_factory(workers=workers, extra_args=["--log-file", str(log)])
    stub = daemon.stub()
    append(stub, "before", events(2))
    wait_until(lambda: said(log, daemon, "listening on", by="every server"), "every start")
    rotated = tmp_path / "store.log.1"
    log.rename(rotated)  # as logrotate does

    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: said(log, daemon, "SIGHUP: log file reopened"), "a new file at the path")
    append(stub, "after", events(3))
    assert head(stub) == 5
    assert daemon.running()
    assert not [e for e in lines_of(rotated) if "SIGHUP" in e["message"]]
    assert said(rotated, daemon, "listening on", by="every server")
    assert daemon.stop() == 0
    assert said(log, daemon, "stopped; head position 5", by="every server")


def test_sighup_reloads_the_log_level_from_the_config_file(
    daemon_factory: DaemonFactory, workers: int, tmp_path: Path
) -> None:
    conf = tmp_path / "store.toml"
    log = tmp_path / "store.log"
    conf.write_text(f'log_level = "ERROR"\nlog_file = "{log}"\n')
    daemon = daemon_factory(workers=workers, extra_args=["--config", str(conf)])
    stub = daemon.stub()
    missing = pb.GetEventRequest(event_id="0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d")
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent, missing)  # a warning: not logged
    workers_before = daemon.worker_pids()

    # map_size cannot change without a restart: named in a warning, not applied.
    conf.write_text(f'log_level = "WARNING"\nlog_file = "{log}"\nmap_size = "2GiB"\n')
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: said(log, daemon, "SIGHUP: log file reopened; log level WARNING"),
               "every process reloaded")  # fmt: skip
    expect_code(grpc.StatusCode.NOT_FOUND, stub.GetEvent, missing)
    wait_until(
        lambda: [e for e in lines_of(log) if e.get("code") == "NOT_FOUND"], "the failure's line"
    )
    failed = [e for e in lines_of(log) if e.get("code") == "NOT_FOUND"]
    assert len(failed) == 1 and failed[0]["level"] == "warning"
    restart = [e for e in lines_of(log) if "cannot be reloaded" in e["message"]]
    assert len(restart) == 1 and "map_size" in restart[0]["message"]
    assert "worker" not in restart[0], "only the supervisor (or the single process) warns"
    assert daemon.worker_pids() == workers_before, "no worker was restarted"
    assert daemon.stop() == 0


def test_a_config_file_that_no_longer_parses_keeps_the_old_settings(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "store.toml"
    log = tmp_path / "store.log"
    conf.write_text(f'log_file = "{log}"\n')
    daemon = daemon_factory(extra_args=["--config", str(conf)])
    conf.write_text("log_level = [\n")
    daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_until(lambda: [e for e in lines_of(log) if "was not reloaded" in e["message"]],
               "the error line")  # fmt: skip
    append(daemon.stub(), "still", events(1))
    assert daemon.stop() == 0


def test_sigusr1_dumps_every_threads_stack_and_keeps_serving(
    daemon_factory: DaemonFactory, workers: int
) -> None:
    daemon = daemon_factory(workers=workers, extra_args=["--log-level", "WARNING"])
    stub = daemon.stub()
    append(stub, "before", events(1))
    daemon.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]

    def dumped() -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in daemon.log_text().splitlines()
            if '"stack of thread MainThread"' in line
        ]  # fmt: skip

    wait_until(lambda: {e.get("worker") for e in dumped()} == processes(daemon),
               "every process's main thread stack")  # fmt: skip
    # The tasks come after the threads, from the same dumping thread.
    wait_until(lambda: "tasks waiting in" in daemon.log_text(), "the event loop's tasks")
    for entry in dumped():
        assert entry["component"] == "lighthouse_store.stacks"
        assert 'File "' in entry["stack"] and entry["thread_name"] == "MainThread"
    lines = [json.loads(line) for line in daemon.log_text().splitlines()]
    threads = {e.get("thread_name") for e in lines if e["message"].startswith("stack of thread")}
    assert "lh-writer" in threads  # every thread, not the main one only
    assert [e for e in lines if "tasks waiting in" in e["message"]], "the event loop's tasks"
    append(stub, "after", events(1))
    assert head(stub) == 2
    assert daemon.stop() == 0
