"""Small real file systems for the disk-pressure tests: a size-limited tmpfs
and a loop-mounted ext4 image, made by the test and unmounted at teardown.
Where this machine cannot mount (not root, no loop device), the test is
skipped with a message saying why, never passed."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

KINDS = ("tmpfs", "ext4")
MIB = 1024 * 1024


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@contextmanager
def mounted(kind: str, size_mib: int, base: Path) -> Iterator[Path]:
    """A fresh ``kind`` file system of ``size_mib`` MiB mounted under ``base``."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} volume needs root (running as uid {os.geteuid()})")
    where = base / f"{kind}-volume"
    where.mkdir()
    if kind == "tmpfs":
        done = _run("mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where))
    else:
        image = base / f"{kind}.img"
        with image.open("wb") as f:
            f.truncate(size_mib * MIB)
        # -m 0: no root-reserved blocks, so that root (these tests) meets ENOSPC
        # where statvfs's f_bavail says the volume is full.
        made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
        done = _run("mount", "-o", "loop", str(image), str(where))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {kind} volume here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if _run("umount", str(where)).returncode != 0:
            _run("umount", "-l", str(where))


def used_ratio(path: Path) -> float:
    vfs = os.statvfs(path)
    return 1 - vfs.f_bavail / vfs.f_blocks


def fill_to(path: Path, ratio: float, name: str = "ballast") -> Path:
    """Write a file under ``path`` until the volume is ``ratio`` used (or full)."""
    ballast = path / name
    vfs = os.statvfs(path)
    want = int((ratio - used_ratio(path)) * vfs.f_blocks * vfs.f_frsize)
    chunk = bytes(MIB)
    with ballast.open("ab", buffering=0) as f:
        try:
            while want > 0:
                want -= f.write(chunk[: min(len(chunk), want)])
        except OSError:  # full: as far as it goes
            pass
        os.fsync(f.fileno())
    return ballast
