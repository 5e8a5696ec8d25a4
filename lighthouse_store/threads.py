"""The daemon's thread names, as the OS sees them too.

Python (before 3.14) names its threads for itself only: to ``top -H``,
``ps -L``, ``perf`` and ``/proc/PID/task/*/comm`` every thread of the daemon
is "python". Each thread the daemon starts calls :func:`name_os_thread` first,
which gives the OS the thread's Python name, so one name shows everywhere:
``lh-writer`` (group commit), ``lh-prealloc`` (data-file preallocation, when
``--preallocate`` is on), ``lh-reader_N`` (page reads; the pool starts them as
reads come). The main thread, which runs the event loop, keeps the process's
name. Linux keeps 15 bytes of a name; elsewhere, or without ctypes, naming
does nothing. Naming never raises: a thread works the same without its name.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15  # <linux/prctl.h>
OS_NAME_BYTES = 15  # TASK_COMM_LEN - 1


def _find_prctl() -> Callable[..., Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl: Callable[..., Any] = ctypes.CDLL(None).prctl
    except (ImportError, OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()


def os_name(name: str) -> bytes:
    """What the OS keeps of ``name``: ASCII (anything else becomes ``?``), 15 bytes."""
    return name.encode("ascii", "replace")[:OS_NAME_BYTES]


def name_os_thread() -> None:
    """Give the calling thread its Python name as the OS sees it."""
    if _PRCTL is None:
        return
    try:
        _PRCTL(_PR_SET_NAME, os_name(threading.current_thread().name))
    except Exception:  # never worth failing a thread over
        return
