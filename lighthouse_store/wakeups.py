"""Cross-worker wake-ups: a commit in one worker wakes the subscriptions of all.

A worker's own commits wake its subscriptions through the writer's commit
listeners (``writer.py``, ``subscriptions.py``). The other workers learn of
a commit here: every worker binds one Unix datagram socket in Linux's
abstract namespace, named from the supervisor's run (``namespace``) and the
worker's index, so a restarted worker takes its predecessor's name and
nothing is left in the file system. Right after each commit that moved the
head, the committing worker's writer thread sends one datagram to every
other worker (:meth:`Wakeups.announce`): non-blocking, and dropped when it
cannot go at once (a full queue, a worker being restarted), so the writer
never waits on another process.

A datagram only says "the head moved". The receiving worker's event loop
drains its socket (``loop.add_reader``) and reads the head from LMDB once
per drain (``LmdbEventStore.observe_head``, one short read transaction),
then wakes its subscriptions, which read the new events from LMDB. Reading
the head from storage, not from the datagrams, is what makes a dropped one
harmless: a datagram is only dropped when the receiver's queue is full, that
is, when it has wake-ups still to read, and the drain that reads them comes
after the commit that could not announce itself, so it finds that commit on
disk. Many commits between two drains cost one read.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("lighthouse_store.wakeups")

_MESSAGE = b"c"  # the content does not matter: see the module docstring
# Datagrams read per drain at most, so that a flood cannot hold the event
# loop; any left make the socket readable again at once.
_MAX_DRAIN = 1000


def address(namespace: str, index: int) -> bytes:
    """The abstract socket address of worker ``index`` (a leading NUL byte)."""
    return b"\0" + f"{namespace}/wake/{index}".encode()


class Wakeups:
    """One worker's end: its socket to be woken on, and a socket to wake the others."""

    def __init__(self, namespace: str, index: int, workers: int) -> None:
        self._inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.setblocking(False)
        self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._outbox.setblocking(False)
        try:
            self._inbox.bind(address(namespace, index))
        except OSError:
            self.close()
            raise
        self._peers = [address(namespace, i) for i in range(workers) if i != index]
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = self.dropped = 0  # counts, for tests and later metrics

    def announce(self) -> None:
        """Tell every other worker the head moved. Called on the writer thread
        after a durable commit; never blocks, never raises."""
        for peer in self._peers:
            try:
                self._outbox.sendto(_MESSAGE, peer)
                self.sent += 1
            except OSError:  # EAGAIN: a full queue; ECONNREFUSED: a worker restarting
                self.dropped += 1

    def listen(self, on_moved: Callable[[], None]) -> None:
        """Call ``on_moved`` on this event loop after other workers' commits."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inbox.fileno(), self._drain, on_moved)

    def _drain(self, on_moved: Callable[[], None]) -> None:
        received = False
        for _ in range(_MAX_DRAIN):
            try:
                self._inbox.recv(16)
            except BlockingIOError:
                break
            except OSError as exc:  # not expected of a bound datagram socket
                log.warning("reading wake-ups failed: %s", exc)
                break
            received = True
        if received:
            on_moved()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._inbox.fileno())
            self._loop = None
        self._inbox.close()
        self._outbox.close()
