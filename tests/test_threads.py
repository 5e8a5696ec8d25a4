"""The daemon's threads carry their names to the OS (lighthouse_store/threads.py)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
from support import append, events, read_all

from lighthouse_store.testing import DaemonProcess
from lighthouse_store.threads import name_os_thread, os_name

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="thread names are read from /proc"
)


def comm(pid: int, tid: int) -> str:
    return Path(f"/proc/{pid}/task/{tid}/comm").read_text(errors="replace").strip()


def test_the_os_keeps_15_ascii_bytes() -> None:
    assert os_name("lh-writer") == b"lh-writer"
    assert os_name("lh-reader_0123456789") == b"lh-reader_01234"
    assert os_name("lh-é") == b"lh-?"  # never half a UTF-8 character


@linux_only
def test_a_thread_gets_its_python_name_at_the_os() -> None:
    seen: list[str] = []

    def run_in_process() -> None:
        name_os_thread()
        seen.append(comm(os.getpid(), threading.get_native_id()))

    t = threading.Thread(target=run_in_process, name="lh-test-thread-long-name")
    t.start()
    t.join(10)
    assert seen == ["lh-test-thread-"]


@linux_only
def test_the_daemon_names_its_threads(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    append(stub, "s", events(3))
    assert len(read_all(stub)) == 3  # runs on a reader thread
    tasks = Path(f"/proc/{daemon.pid}/task").iterdir()
    names = sorted(comm(daemon.pid, int(t.name)) for t in tasks)
    assert names.count("lh-writer") == 1, names
    assert names.count("lh-prealloc") == 1, names  # preallocation is on by default
    assert "lh-reader_0" in names, names
