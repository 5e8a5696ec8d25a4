"""The default number of workers: usable CPUs from the affinity mask and the
cgroup quota (``cpus.py``), on fake cgroup trees (pure file reading)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lighthouse_store import cpus


def tree(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "quota"),
    [
        # cgroup v2: the process's own cgroup and its ancestors; the tightest wins.
        ("0::/a/b\n", {"cgroup.controllers": "cpu", "a/b/cpu.max": "max 100000",
                       "a/cpu.max": "150000 100000"}, 1.5),
        ("0::/a/b\n", {"cgroup.controllers": "cpu", "a/b/cpu.max": "50000 100000",
                       "a/cpu.max": "300000 100000"}, 0.5),
        ("0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "max 100000"}, None),
        # cgroup v1 (a container sees its own cgroup at the mount point).
        ("4:memory:/x\n3:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
                                             "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.5),
        ("1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
         None),
        ("1:cpu:/gone\n", {}, None),  # nothing readable: no quota
    ],
    ids=["v2-parent", "v2-own", "v2-max", "v1-quota", "v1-none", "unreadable"],
)  # fmt: skip
def test_the_cgroup_quota(
    tmp_path: Path, proc_cgroup: str, files: dict[str, str], quota: float | None
) -> None:
    root, proc = tree(tmp_path, proc_cgroup, files)
    assert cpus.cgroup_cpu_quota(root, proc) == quota


def test_usable_cpus_is_the_affinity_mask_cut_by_the_quota_rounded_down(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    root, proc = tree(tmp_path, "0::/\n", {"cgroup.controllers": "cpu", "cpu.max": "max 100000"})
    assert cpus.usable_cpus(root, proc) == affinity
    (root / "cpu.max").write_text(f"{affinity * 100000 + 50000} 100000")
    assert cpus.usable_cpus(root, proc) == affinity  # more quota than CPUs
    (root / "cpu.max").write_text("150000 100000")
    assert cpus.usable_cpus(root, proc) == 1  # 1.5 CPUs: one worker, never throttled
    (root / "cpu.max").write_text("20000 100000")
    assert cpus.usable_cpus(root, proc) == 1  # never fewer than one


def test_usable_cpus_follows_the_affinity_mask(tmp_path: Path) -> None:
    mask = os.sched_getaffinity(0)
    if len(mask) < 2:
        pytest.skip("needs two CPUs")
    root, proc = tree(tmp_path, "1:cpu:/gone\n", {})
    os.sched_setaffinity(0, {min(mask)})
    try:
        assert cpus.usable_cpus(root, proc) == 1
    finally:
        os.sched_setaffinity(0, mask)
    assert cpus.usable_cpus(root, proc) == len(mask)


def test_the_worker_count_is_the_setting_or_usable_cpus_and_one_off_linux() -> None:
    assert cpus.worker_count(3, "linux") == 3
    assert cpus.worker_count(0, "linux") == cpus.usable_cpus()
    assert cpus.worker_count(0, "darwin") == cpus.worker_count(1, "darwin") == 1
    with pytest.raises(ValueError, match="needs Linux"):
        cpus.worker_count(2, "darwin")
