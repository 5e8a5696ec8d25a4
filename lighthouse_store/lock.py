"""One daemon per data directory: exclusive ``flock``s on the data dir and its ``LOCK``.

The kernel drops a ``flock`` when its process dies, ``kill -9`` included, so a
lock left behind by a crash never blocks a restart. Two locks, both taken
without waiting:

- on the **data directory itself** (opened ``O_DIRECTORY``): a file can be
  removed or replaced under a running daemon (``rm LOCK``), after which a
  second daemon would create a new ``LOCK`` and lock that; the directory
  cannot be swapped while it is open, so its lock holds whatever happens
  to the files in it;
- on ``<data_dir>/LOCK``, which holds the owner's pid, only to make the
  refusal message useful (and which an older daemon, locking only it, also
  respects). It is opened with ``O_NOFOLLOW``: a ``LOCK`` that is a
  symbolic link is refused, never followed (its target would be truncated
  and written), and so is one that is not a regular file.

``repair`` and ``restore`` take the same lock, so they never run on a store
a daemon serves, and no daemon starts on one they are rewriting.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from lighthouse_store.errors import DataDirLocked, StorageFailure


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "LOCK"
        self._fds: list[int] = []

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory = self._open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            self._lock(directory)
            fd = self._open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageFailure(f"{self.path} is not a regular file; remove it")
            self._lock(fd)
        except BaseException:
            self.release()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    def release(self) -> None:
        for fd in reversed(self._fds):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._fds.clear()

    def _open(self, path: Path, flags: int) -> int:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageFailure(
                    f"{path} is a symbolic link; the lock file is never followed: remove the link"
                ) from None
            raise
        self._fds.append(fd)
        return fd

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirLocked(
                f"data directory {self.path.parent} is already in use by another "
                f"lighthouse-store (pid {self._owner()}); one daemon per data directory"
            ) from None

    def _owner(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return "unknown"
        try:
            return os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
