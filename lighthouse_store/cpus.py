"""How many CPUs this process may use: the default number of workers (``--workers 0``).

``os.cpu_count()`` counts the machine's CPUs, not the ones this process may
run on. Two things narrow that: the CPU affinity mask (``taskset``, a
container's ``cpuset``), and a cgroup CPU quota (``docker run --cpus 1.5``,
a Kubernetes CPU limit), which lets the process use that many CPUs' worth of
time however many it runs on. The usable count is the smaller of the two,
the quota rounded down (as Go's automaxprocs does: one more worker than the
quota allows only gets the whole daemon throttled), and never less than 1.

The quota is read from cgroup v2 (``cpu.max``: ``"<quota> <period>"`` or
``"max <period>"``) or cgroup v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
-1 for none), in the process's own cgroup and every ancestor up to the
mount point; the tightest applies. Anything unreadable counts as no quota.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cgroup_cpu_quota", "usable_cpus", "worker_count"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def worker_count(setting: int, platform: str = sys.platform) -> int:
    """The number of workers ``--workers`` asks for (0: one per usable CPU).
    Workers need Linux (``SO_REUSEPORT`` spreading connections, abstract
    sockets, the parent-death signal): elsewhere the default is one process,
    and more is refused (ValueError)."""
    if not platform.startswith("linux"):
        if setting > 1:
            raise ValueError("--workers: more than one worker process needs Linux")
        return 1
    return setting or usable_cpus()


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may use: affinity mask, then cgroup quota; at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        count = min(count, math.floor(quota))
    return max(1, count)


def cgroup_cpu_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroups, or None."""
    quotas = [q for d in _cgroup_dirs(root, proc_cgroup) if (q := _quota_in(d)) is not None]
    return min(quotas, default=None)


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> Iterator[Path]:
    """The directories of this process's CPU cgroups and their ancestors.

    ``/proc/self/cgroup`` has one line per hierarchy: ``0::<path>`` for
    cgroup v2, ``<n>:<controllers>:<path>`` for v1. In a container with its
    own cgroup namespace the path is ``/``, which is the mount point itself.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
        elif "cpu" in controllers.split(","):
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        here = base / path.lstrip("/")
        while True:
            yield here
            if here == base or base not in here.parents:
                break
            here = here.parent


def _quota_in(directory: Path) -> float | None:
    try:
        v2 = (directory / "cpu.max").read_text().split()
    except OSError:
        v2 = []
    if len(v2) == 2:
        return None if v2[0] == "max" else _ratio(v2[0], v2[1])
    try:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
