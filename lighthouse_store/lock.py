"""One daemon per data directory: an exclusive ``flock`` on ``<data_dir>/LOCK``.

The kernel drops a ``flock`` when its process dies, ``kill -9`` included, so a
lock left behind by a crash never blocks a restart. The file holds the owner's
pid, only to make the refusal message useful.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lighthouse_store.errors import DataDirLocked


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "LOCK"
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data directory {self.path.parent} is already in use by another "
                f"lighthouse-store (pid {owner}); one daemon per data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
