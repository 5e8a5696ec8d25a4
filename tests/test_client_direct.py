"""StoreClient's unary calls on the calling thread (_direct.py), against a real
daemon: they do not need the client's event loop, unless an outbox does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lighthouse_client import NewEvent, Outbox, StoreClient
from lighthouse_client._direct import run_here
from lighthouse_client.client import _LoopThread
from lighthouse_store.testing import DaemonProcess


@contextmanager
def loop_blocked() -> Iterator[None]:
    """The clients' shared event loop thread, busy until the block ends."""
    release, busy = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        release.wait(30)

    _LoopThread.shared().loop.call_soon_threadsafe(block)
    assert busy.wait(10)
    try:
        yield
    finally:
        release.set()


def in_thread(call: Callable[[], Any]) -> threading.Event:
    """Run ``call`` in another thread; the event is set when it has returned."""
    done = threading.Event()

    def run() -> None:
        call()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done


def finishes(call: Callable[[], Any], within: float) -> bool:
    """Does ``call`` return within ``within`` seconds (in another thread)?"""
    return in_thread(call).wait(within)


def test_unary_calls_run_on_the_calling_thread(daemon: DaemonProcess) -> None:
    with StoreClient(daemon.address) as client:
        written = client.append("s", NewEvent("E"))
        with loop_blocked():
            assert finishes(lambda: client.append("s", NewEvent("E")), 10)
            assert finishes(lambda: client.read_stream("s"), 10)
            assert finishes(lambda: client.read_all(), 10)
            assert finishes(lambda: client.info(), 10)
            assert finishes(lambda: client.get_event(client.read_all()[0].event_id), 10)
        assert client.read_stream("s")[0].position == written.first_position


def test_with_an_outbox_every_call_goes_through_the_loop(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    try:
        with StoreClient(daemon.address, outbox=outbox) as client:
            client.append("s", NewEvent("E"))
            with loop_blocked():
                appended = in_thread(lambda: client.append("s", NewEvent("E")))
                assert not appended.wait(0.5)
            assert appended.wait(10)  # once the loop runs again
            assert len(client.read_stream("s")) == 2
    finally:
        outbox.close()


def test_a_call_that_would_wait_for_an_event_loop_is_refused() -> None:
    with pytest.raises(RuntimeError, match="waited for an event loop"):
        run_here(asyncio.sleep(0))  # (a bare yield: what waiting on a loop would do)
    assert run_here(_answer()) == "done"


async def _answer() -> str:
    return "done"


def test_a_blocking_subscription_takes_events_in_batches_within_its_window(
    daemon: DaemonProcess,
) -> None:
    with StoreClient(daemon.address) as client:
        client.append("s", [NewEvent("E") for _ in range(10)])
        with client.subscribe(start="start", window=3) as small:
            got: list[int] = []
            # Credits go back as events are handed out: all 10 arrive through a window of 3.
            assert in_thread(lambda: got.extend(next(small).position for _ in range(10))).wait(20)
            assert got == list(range(1, 11))
        with client.subscribe(start="start") as sub:
            first = next(sub)  # (the others of its batch are held here)
            assert sub.last_position == first.position == 1
            assert sub.lag() == 9  # from the event handed out, not the last one taken
            assert [next(sub).position for _ in range(9)] == list(range(2, 11))
            assert sub.lag() == 0
