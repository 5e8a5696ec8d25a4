"""Fault injection for crash tests: where the write path can be made to fail.

Off unless an environment variable turns it on; never set in production.

``LIGHTHOUSE_FAULT_EXIT_AFTER_COMMITS=N``: the process dies (``os._exit``,
like ``kill -9``) right after the N-th commit that wrote appends became
durable and before any of its callers is answered. This is the "reply lost"
case clients must survive by retrying with the same event ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("lighthouse_store.faults")

EXIT_AFTER_COMMITS = "LIGHTHOUSE_FAULT_EXIT_AFTER_COMMITS"
EXIT_CODE = 137


@dataclass
class Faults:
    exit_after_commits: int = 0
    _commits: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Faults:
        env = os.environ if environ is None else environ
        raw = env.get(EXIT_AFTER_COMMITS, "")
        faults = cls(exit_after_commits=int(raw) if raw.isdigit() else 0)
        if faults.exit_after_commits:
            log.warning("fault injection on: exit after commit %d", faults.exit_after_commits)
        return faults

    def after_commit(self, appends: int) -> None:
        """Called by the writer after a durable commit, before answering."""
        if not self.exit_after_commits or appends == 0:
            return
        self._commits += 1
        if self._commits >= self.exit_after_commits:
            os._exit(EXIT_CODE)
