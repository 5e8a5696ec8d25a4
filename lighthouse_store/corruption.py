"""Corruption found in a store: the one place it is reported.

Whatever finds that stored data is not what was written calls :func:`found`
and raises what it returns: ``records.checked`` (a checksum), ``lmdb_reads``
(a log position or an index entry missing, an index pointing at the wrong
record), ``lmdb_txn`` (LMDB's own ``MDB_CORRUPTED`` / ``MDB_PAGE_NOTFOUND``:
a damaged B-tree page), the start-up check of the newest records
(``integrity.py``) and the background scrub (``scrub.py``). :func:`found`
logs one error line per kind and position (a read that keeps reaching the
same record does not flood the log), calls every hook added with
:func:`add_hook` on every finding, and returns the :class:`Corruption` to raise.

The hooks are where the rest of the daemon learns of corruption: the
``lighthouse_corruption_detected_total`` counter (``metrics.py``, a record
counted once per process), and SPEC §4's degradation controller
(``degradation.py``), whose level goes to ``degraded`` on any finding: the
start-up check's, the scrub's, and a client's read that reached a corrupt
record (which also fails with ``DATA_LOSS``): a store known to hold a
damaged record takes no more appends until an operator has looked
(``lighthouse-store admin recover``). In a worker process the hook also
tells the supervisor, whose controller decides for all. They run on the
thread that found it (a reader thread, the event loop, the scrub), so they
must be quick and thread-safe.

The offline tools (``verify.py``, ``repair.py``) make their own reports and
do not go through here, except where they share the daemon's read code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from lighthouse_store.errors import Corruption

__all__ = ["Finding", "add_hook", "found", "remove_hook"]

log = logging.getLogger("lighthouse_store.corruption")

# Kinds of finding (``Finding.what``), a small fixed set so that a metric
# label or an alert can name them.
CHECKSUM = "checksum"  # a stored record fails its CRC-32
MISSING = "missing"  # a log position below the head has no record
INDEX = "index"  # an index entry is missing or points at another record
BTREE = "btree"  # LMDB found a damaged page (MDB_CORRUPTED, MDB_PAGE_NOTFOUND)
RECORD = "record"  # a record with a good checksum that contradicts its key
KINDS = (CHECKSUM, MISSING, INDEX, BTREE, RECORD)

_LOGGED_MAX = 4096  # (kind, position) pairs remembered so as to log each once


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of corruption: what kind, where, and a message for people
    (no file paths: it may reach a client)."""

    what: str  # one of KINDS
    position: int | None  # the log position, None when no one position is concerned
    message: str


Hook = Callable[[Finding], None]
_hooks: list[Hook] = []
_logged: set[tuple[str, int | None]] = set()
_lock = threading.Lock()


def add_hook(hook: Hook) -> None:
    """Call ``hook`` with every finding from now on (on the finding's thread)."""
    with _lock:
        _hooks.append(hook)


def remove_hook(hook: Hook) -> None:
    with _lock:
        if hook in _hooks:
            _hooks.remove(hook)


def found(what: str, position: int | None, message: str) -> Corruption:
    """Report a finding (log line, hooks); the error for the caller to raise."""
    finding = Finding(what, position, message)
    key = (what, position)
    with _lock:
        first = key not in _logged and len(_logged) < _LOGGED_MAX
        if first:
            _logged.add(key)
        hooks = list(_hooks)
    if first:
        log.error(
            "corruption found: %s", message,
            extra={"fields": {"corruption": what, "position": position}},
        )  # fmt: skip
    for hook in hooks:
        try:
            hook(finding)
        except Exception:  # a hook's bug must not turn DATA_LOSS into INTERNAL
            log.exception("a corruption hook failed")
    return Corruption(message, position)
