"""The background scrub: old records read back while the store is idle.

The start-up check reads back the newest records (``integrity.py``) and a
client's read checks every record it reaches, but a record nobody reads
could rot unnoticed until the day someone needs it. The scrub reads them
all, oldest first and round again, with the start-up check's checks
(``integrity.check_run``: the checksum, the position, the record's entries
in ``stream_idx`` and ``event_ids``, no gap).

Its cost is bounded: at most ``--scrub-records-per-second`` records a second
(``0``: no scrub), a tenth of that every :data:`TICK_S`, each batch in a
short read transaction of its own; and only while the store is idle, that
is when no write transaction committed since the previous tick (LMDB's
newest transaction id, read from its meta page without a transaction, so
appends and acks of any worker count). A busy store is not scrubbed at all;
the scrub goes on where it stopped once it is quiet.

A finding is reported like any other (``corruption.found``: one log line
per record, the hooks: the corruption counter, and the degradation
controller, which makes the store read-only, ``degradation.py``), and handed
to ``on_finding`` (the daemon's: :func:`told`, a line saying what to do).
With worker processes the scrub runs in the supervisor, one per store,
beside the start-up checks and the controller, which tells every worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lighthouse_store import corruption
from lighthouse_store.corruption import Finding
from lighthouse_store.errors import Corruption, StoreError
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.threads import name_os_thread

log = logging.getLogger("lighthouse_store.scrub")


_told: set[tuple[str, int | None]] = set()


def told(finding: Finding) -> None:
    """The daemon's ``on_finding``: what the operator is to do, once per
    record (the scrub goes round again and again)."""
    key = (finding.what, finding.position)
    if key in _told or len(_told) > 4096:
        return
    _told.add(key)
    log.error(
        "the scrub found corruption (%s); the store is degraded (read-only): stop the "
        "daemon, run lighthouse-store verify and repair",
        finding.message,
    )


TICK_S = 0.1
AFTER_ERROR_S = 60.0


class Scrubber:
    def __init__(
        self,
        store: LmdbEventStore,
        records_per_second: int,
        on_finding: Callable[[Finding], None],
    ) -> None:
        self._store = store
        self._batch = max(1, round(records_per_second * TICK_S))
        self._on = records_per_second > 0
        self._on_finding = on_finding
        self._after = 0  # the last position checked
        self._seen_txnid = -1  # LMDB's last transaction at the previous tick
        self.passes = 0  # times the whole log was checked (for tests)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lh-scrub", daemon=True)

    def start(self) -> Scrubber:
        if self._on:
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def step(self) -> bool:
        """One tick: scrub a batch if nothing committed since the last tick;
        whether it did."""
        txnid = self._store.last_txnid()
        idle, self._seen_txnid = txnid == self._seen_txnid, txnid
        if not idle:
            return False
        self._after, findings = self._store.scrub(self._after, self._batch)
        if self._after == 0:
            self.passes += 1
        for finding in findings:
            self._on_finding(finding)
        return True

    def _run(self) -> None:
        name_os_thread()
        pause = TICK_S
        while not self._stop.wait(pause):
            pause = TICK_S
            try:
                self.step()
            except StoreError as exc:  # LMDB failed the read: a damaged page (reported)
                if isinstance(exc, Corruption):
                    self._on_finding(Finding(corruption.BTREE, exc.position, exc.message))
                log.error(
                    "the scrub stopped after position %d: %s; it starts again from the "
                    "oldest record in %.0f s", self._after, exc.message, AFTER_ERROR_S,
                )  # fmt: skip
                self._after, pause = 0, AFTER_ERROR_S
