"""Fault injection for crash tests: where the write path can be made to fail.

Off unless an environment variable turns it on; never set in production.

``LIGHTHOUSE_FAULT_EXIT_AFTER_COMMITS=N``: the process dies (``os._exit``,
like ``kill -9``) right after the N-th commit that wrote appends became
durable and before any of its callers is answered. This is the "reply lost"
case clients must survive by retrying with the same event ids.

``LIGHTHOUSE_FAULT_COMMIT_PAUSE_MS=N``: the writer pauses N ms after every
group of appends it commits (or fails to), before answering its callers: a
slow disk. Appends that arrive meanwhile queue up (and are refused once the
queue is full), so tests can see group commit and the queue bound at work
without racing the machine's speed.

``LIGHTHOUSE_FAULT_DROP_WAKEUPS=1``: with several workers, the writer never
tells the other workers of its commits (``wakeups.py``), as if every
wake-up were lost: what a worker answers must not depend on having heard
of another's commit (GetInfo's head, a subscription from the end).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("lighthouse_store.faults")

EXIT_AFTER_COMMITS = "LIGHTHOUSE_FAULT_EXIT_AFTER_COMMITS"
COMMIT_PAUSE_MS = "LIGHTHOUSE_FAULT_COMMIT_PAUSE_MS"
DROP_WAKEUPS = "LIGHTHOUSE_FAULT_DROP_WAKEUPS"
EXIT_CODE = 137


@dataclass
class Faults:
    exit_after_commits: int = 0
    commit_pause_ms: int = 0
    drop_wakeups: bool = False
    _commits: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        env = os.environ if environ is None else environ
        exit_after, pause = (env.get(name, "") for name in (EXIT_AFTER_COMMITS, COMMIT_PAUSE_MS))
        faults = cls(
            exit_after_commits=int(exit_after) if exit_after.isdigit() else 0,
            commit_pause_ms=int(pause) if pause.isdigit() else 0,
            drop_wakeups=env.get(DROP_WAKEUPS) == "1",
        )
        if faults.exit_after_commits:
            log.warning("fault injection on: exit after commit %d", faults.exit_after_commits)
        if faults.commit_pause_ms:
            log.warning("fault injection on: %d ms pause after commits", faults.commit_pause_ms)
        if faults.drop_wakeups:
            log.warning("fault injection on: other workers are not told of commits")
        return faults

    def after_commit(self, appends: int) -> None:
        """Called by the writer after a durable commit, before answering."""
        if appends == 0:
            return
        if self.commit_pause_ms:
            time.sleep(self.commit_pause_ms / 1000)
        if not self.exit_after_commits:
            return
        self._commits += 1
        if self._commits >= self.exit_after_commits:
            os._exit(EXIT_CODE)
