"""OS-level names for the daemon's threads.

Python (before 3.14) names its threads for itself only: to ``top -H``,
``ps -L``, ``perf`` and ``/proc/PID/task/*/comm`` every thread of the daemon
is "python". Each thread the daemon starts names itself here, so an operator
can tell the writer from the event loop: ``lh-writer`` (group commit),
``lh-prealloc`` (data-file preallocation), ``lh-reader`` (page reads). The
main thread, which runs the event loop, keeps the process's name. Linux keeps
15 bytes of a name; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15  # <linux/prctl.h>


def _find_prctl() -> Callable[..., Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., Any] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` (its first 15 bytes) as the OS sees it."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
