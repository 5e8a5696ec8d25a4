"""One daemon per data directory; a crashed daemon's lock does not block."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import DaemonFactory, append, events, head, read_all

from lighthouse_store.testing import DaemonProcess, DaemonStartError


def _run_second(data_dir: Path) -> subprocess.CompletedProcess[str]:
    cmd = DaemonProcess(data_dir).command()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Bounded: a daemon that waits for the lock instead of failing fast fails here.
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, check=False)


def _assert_refused(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, f"second daemon exited {proc.returncode}"
    assert '"ready"' not in proc.stdout, proc.stdout
    err = proc.stderr.lower()
    assert "already" in err or "in use" in err, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_second_daemon_on_same_dir_is_refused(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    append(stub, "s", events(5))
    before = read_all(stub)

    _assert_refused(_run_second(daemon.data_dir))

    # The first daemon is unaffected.
    assert daemon.running()
    assert read_all(stub) == before
    assert append(stub, "s", events(1)).first_position == 6
    assert daemon.stop() == 0


def test_second_daemon_via_testing_helper(daemon: DaemonProcess, tmp_path: Path) -> None:
    second = DaemonProcess(daemon.data_dir, log_path=tmp_path / "second.log")
    with pytest.raises(DaemonStartError):
        second.start(timeout=30)
    text = second.log_text().lower()
    assert "already" in text or "in use" in text, text[-2000:]
    assert second.proc is not None and second.proc.returncode not in (0, None)
    assert daemon.running()


def test_second_daemon_via_symlinked_dir_is_refused(daemon: DaemonProcess, tmp_path: Path) -> None:
    link = tmp_path / "link-to-data"
    link.symlink_to(daemon.data_dir, target_is_directory=True)
    _assert_refused(_run_second(link))
    assert daemon.running()


def test_restart_after_kill9_is_not_blocked_by_stale_lock(
    daemon_factory: DaemonFactory,
) -> None:
    first = daemon_factory()
    stub: Any = first.stub()
    append(stub, "s", events(3))
    before = read_all(stub)
    assert first.kill9() == -9

    second = daemon_factory(first.data_dir)  # a new process on the same dir
    stub = second.stub()
    assert read_all(stub) == before
    assert append(stub, "s", events(1)).first_position == 4
    # And while it runs, it holds the lock in turn.
    _assert_refused(_run_second(first.data_dir))
    assert second.stop() == 0

    # After a clean stop the lock is free again.
    third = daemon_factory(first.data_dir)
    assert head(third.stub()) == 4


def test_data_dir_that_is_a_file_fails_cleanly(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-dir"
    bogus.write_text("hello")
    proc = _run_second(bogus)
    assert proc.returncode != 0
    assert '"ready"' not in proc.stdout
    assert proc.stderr.strip(), "no message on stderr"
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_symlinked_lock_file_is_refused_not_followed(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """It was followed, and its target truncated and overwritten with a pid."""
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "LOCK").symlink_to(victim)
    proc = _run_second(data_dir)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert '"ready"' not in proc.stdout
    assert "is a symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_text() == "do not touch\n"


def test_removing_the_lock_file_does_not_let_a_second_daemon_in(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The data dir itself is locked too: after ``rm LOCK`` a second daemon
    (and repair, which takes the same lock) is still refused; it was let in."""
    stub = daemon.stub()
    append(stub, "s", events(3))
    (daemon.data_dir / "LOCK").unlink()
    _assert_refused(_run_second(daemon.data_dir))
    repair = subprocess.run(
        [sys.executable, "-m", "lighthouse_store", "repair", "--data-dir", str(daemon.data_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert repair.returncode == 3, repair.stderr
    assert "already in use" in repair.stderr
    assert daemon.running()
    assert append(stub, "s", events(1)).first_position == 4
    assert daemon.stop() == 0
    daemon.start()  # and the lock is free again once the daemon is gone
    assert head(daemon.stub()) == 4
