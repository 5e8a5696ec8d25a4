"""The subscription tests of ``test_subscribe.py`` against two worker
processes, with every subscription on one worker and every append on the
other: what a subscriber sees of commits made in another process (wake-ups,
``wakeups.py``) must be what it sees of its own worker's.

Every test of that module runs here too, but two about one process
(``SINGLE_PROCESS_ONLY``).
"""

from __future__ import annotations

from typing import Any

import pytest
import test_subscribe
from support import DaemonFactory

from lighthouse_store.testing import DaemonProcess

# Tests that are about one process: the daemon's memory (its pid is the
# supervisor's here), and 100 subscribers on one connection (one worker).
SINGLE_PROCESS_ONLY = {
    "test_a_stalled_subscriber_never_blocks_writers_or_grows_memory",
    "test_many_subscribers_see_the_same_events_in_order",
}

# Every other test of test_subscribe.py (those added later too) is collected
# here again, where it gets this module's daemon_factory.
for _name, _test in vars(test_subscribe).items():
    if _name.startswith("test_") and _name not in SINGLE_PROCESS_ONLY:
        globals()[_name] = _test


class SplitStub:
    """A stub whose Subscribe goes to one worker and whose appends and reads
    go to another. GetInfo goes with Subscribe: its subscriber count is the
    answering worker's own."""

    def __init__(self, subscribing: Any, appending: Any) -> None:
        self._subscribing = subscribing
        self._appending = appending

    def __getattr__(self, name: str) -> Any:
        side = self._subscribing if name in ("Subscribe", "GetInfo") else self._appending
        return getattr(side, name)


class TwoWorkers:
    """A DaemonProcess with two workers whose ``stub()`` is a :class:`SplitStub`."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self._daemon = daemon

    def __getattr__(self, name: str) -> Any:
        return getattr(self._daemon, name)

    def stub(self) -> SplitStub:
        appending, subscribing = self._daemon.worker_pids()
        return SplitStub(self._daemon.stub(subscribing), self._daemon.stub(appending))


@pytest.fixture
def daemon_factory(daemon_factory: DaemonFactory) -> Any:
    """The conftest factory (and so the ``daemon`` fixture), with two workers."""

    def make(*args: Any, **kwargs: Any) -> TwoWorkers:
        kwargs.setdefault("workers", 2)
        return TwoWorkers(daemon_factory(*args, **kwargs))

    return make
