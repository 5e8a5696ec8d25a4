"""Cross-worker wake-ups (``wakeups.py``) on real abstract Unix sockets, in
one process: an announce never blocks or raises, and a burst of them costs
the receiver one wake-up."""

from __future__ import annotations

import asyncio
import secrets

from lighthouse_store.wakeups import Wakeups


def namespace() -> str:
    return f"lighthouse-store-test/{secrets.token_hex(6)}"


def test_an_announce_to_a_worker_that_is_not_there_is_dropped_quietly() -> None:
    alone = Wakeups(namespace(), 0, 3)  # workers 1 and 2 are restarting
    try:
        alone.announce()
        assert (alone.sent, alone.dropped) == (0, 2)
    finally:
        alone.close()


def test_a_burst_of_announces_wakes_the_other_worker_once_and_never_blocks() -> None:
    async def main() -> tuple[int, int, int]:
        ns = namespace()
        sender, receiver = Wakeups(ns, 0, 2), Wakeups(ns, 1, 2)
        woken = asyncio.Event()
        calls = 0

        def on_moved() -> None:
            nonlocal calls
            calls += 1
            woken.set()

        try:
            receiver.listen(on_moved)
            for _ in range(100):  # far more than the socket queues (max_dgram_qlen)
                sender.announce()
            await asyncio.wait_for(woken.wait(), 10)
            await asyncio.sleep(0.05)  # anything left would wake it again now
            return calls, sender.sent, sender.dropped
        finally:
            sender.close()
            receiver.close()

    calls, sent, dropped = asyncio.run(main())
    assert calls == 1
    assert sent + dropped == 100 and sent >= 1 and dropped >= 1
