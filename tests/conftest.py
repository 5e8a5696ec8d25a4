"""Fixtures: real daemon subprocesses on loopback, each on its own data dir."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lighthouse_store.testing import DaemonProcess

sys.path.insert(0, str(Path(__file__).parent))

# Every daemon the tests start keeps 2 MiB of zero-filled space ahead of its data
# (prealloc.py) instead of the default 64 MiB: the same code path (small stores
# run past it and it refills), without writing gigabytes of zeros per test run.
os.environ.setdefault("LIGHTHOUSE_PREALLOCATE", "2MiB")

from support import DaemonFactory

# The scripted in-process servers (pytest-grpc) for the client's tests.
pytest_plugins = ["scripted"]


def _shutdown(d: DaemonProcess) -> None:
    if d.running():
        try:
            d.stop(timeout=20)
        except Exception:
            with contextlib.suppress(Exception):
                d.kill9()
    else:
        with contextlib.suppress(Exception):
            d._reap(kill=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def _failed(node: Any) -> bool:
    rep = getattr(node, "rep_call", None) or getattr(node, "rep_setup", None)
    return bool(rep is not None and rep.failed)


# The degradation controller's Append p99 trigger, off unless a test turns it
# on (test_degradation.py): on this shared machine a bulk load's p99 passes
# 100 ms, and the level's event in $system would move the head that tests
# of other things count. Flags override these variables.
NO_P99_TRIGGER = {"LIGHTHOUSE_DEGRADE_P99_WARN_MS": "0", "LIGHTHOUSE_DEGRADE_P99_DEGRADED_MS": "0"}


def _make_factory(base: Path, created: list[DaemonProcess]) -> Callable[..., DaemonProcess]:
    counter = [0]

    def make(
        data_dir: Path | None = None,
        *,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start: bool = True,
        workers: int = 1,
    ) -> DaemonProcess:
        counter[0] += 1
        if data_dir is None:
            data_dir = base / f"data{counter[0]}"
        data_dir.mkdir(parents=True, exist_ok=True)
        d = DaemonProcess(
            data_dir,
            extra_args=list(extra_args),
            env={**NO_P99_TRIGGER, **(os.environ if env is None else env)},
            log_path=base / f"daemon{counter[0]}.log",
            workers=workers,
        )
        created.append(d)
        if start:
            d.start()
        return d

    return make


def _print_logs(created: list[DaemonProcess]) -> None:
    for d in created:
        text = d.log_text()
        print(f"----- daemon log {d.log_path} (last 3000 chars) -----\n{text[-3000:]}")


@pytest.fixture
def daemon_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Generator[DaemonFactory, None, None]:
    """Start more daemons; all of them are stopped at teardown."""
    created: list[DaemonProcess] = []
    make: Any = _make_factory(tmp_path, created)
    yield make
    for d in created:
        _shutdown(d)
    if _failed(request.node):
        _print_logs(created)


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    """A test that takes this runs twice: against one process, and against a
    supervisor with two worker processes (``--workers 2``)."""
    return int(request.param)


@pytest.fixture
def daemon(daemon_factory: DaemonFactory) -> DaemonProcess:
    """A fresh daemon (fsync durability, default limits) on an empty data dir."""
    return daemon_factory()


@pytest.fixture
def stub(daemon: DaemonProcess) -> Any:
    return daemon.stub()


@pytest.fixture(scope="module")
def module_daemon_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Generator[DaemonFactory, None, None]:
    """Like daemon_factory, shared by all tests of one module."""
    created: list[DaemonProcess] = []
    make: Any = _make_factory(tmp_path_factory.mktemp("mod"), created)
    yield make
    for d in created:
        _shutdown(d)
