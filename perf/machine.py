"""What the results file records about the machine and the software a run used."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def fs_type(path: Path) -> str:
    """The file system type of the mount holding path (from /proc/mounts)."""
    try:
        best, fstype = "", "unknown"
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if len(parts) > 2 and inside and len(mnt) >= len(best):
                best, fstype = mnt, parts[2]
        return fstype
    except OSError:
        return "unknown"


def _git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(work_dir: Path, repo: Path) -> dict[str, Any]:
    import lmdb

    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus_usable = os.cpu_count() or 0
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": cpus_usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "loadavg_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "lmdb": _version("lmdb"),
        "liblmdb": ".".join(str(x) for x in lmdb.version()),
        "lighthouse_store": _version("lighthouse-store"),
        "work_dir_fs": fs_type(work_dir),
        "git_commit": _git_commit(repo),
    }


def python_loop_ms(additions: int = 2_000_000, repeats: int = 5) -> float:
    """Median time of a fixed pure-Python loop: how fast this machine's CPU is
    right now (on a shared VM it moves). Recorded at the start of each round
    beside the results, it helps tell a slow machine from a slow store."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for i in range(additions):
            total += i
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
