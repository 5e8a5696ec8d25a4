"""Which LMDB directories this process has open, and for whom.

LMDB must not open one environment twice in a process (its locks are per
process, so a second open would corrupt them), and a read cache and an outbox
must never share a directory. :func:`claim_dir` reserves a directory (by its
resolved path) for one owner and raises ``ValueError`` naming the current
owner if it is taken; :func:`release_dir` gives it back. The cache and the
outbox claim before they open LMDB and release after they close it.
"""

from __future__ import annotations

import threading
from pathlib import Path

__all__ = ["claim_dir", "release_dir"]

_OPEN_DIRS: dict[str, str] = {}  # resolved path -> the owner's name
_LOCK = threading.Lock()


def claim_dir(path: Path, owner: str) -> str:
    """Reserve ``path`` for ``owner``; returns the key to release it with."""
    key = str(path.resolve())
    with _LOCK:
        if key in _OPEN_DIRS:
            raise ValueError(f"{path} is already open in this process ({_OPEN_DIRS[key]})")
        _OPEN_DIRS[key] = owner
    return key


def release_dir(key: str) -> None:
    """Give back a claim (a key not claimed is ignored)."""
    with _LOCK:
        _OPEN_DIRS.pop(key, None)
