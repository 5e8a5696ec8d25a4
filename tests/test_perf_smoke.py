"""The perf harness runs end to end (a smoke run: no speed is asserted here;
speed is judged by `./dev perf`, against baselines measured in the same run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lighthouse_store import __version__

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from machine import fs_type as _fs_type  # noqa: E402
from pool import cpu_seconds, other_processes_cpu, processes_cpu_seconds  # noqa: E402


@pytest.mark.slow
def test_perf_quick_runs_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "perf/bench.py",
            "--quick",
            "--repeat",
            "2",
            "--out",
            str(out),
            "--tmp-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == []
    medians = results["medians"]
    for metric in (
        "append_seq_p50_ms",
        "append_conc_rate",
        "nogroup_conc_rate",
        "batch1_rate",
        "batch1_v7_rate",
        "batch1_v4_rate",
        "replay_rate",
        "get_p99_ms",
        "delivery_p50_ms",
        "fanout_rate",
        "resume_p99_ms",
        "echo_seq_p50_ms",
        "lmdb1_commits_per_s",
        "lmdb100_events_per_s",
        "client_append_p50_ms",
        "client_stubs_append_p50_ms",
        "client_replay_rate",
        "client_stubs_replay_rate",
        "client_replay_vs_stubs",
    ):
        assert medians.get(metric, 0) > 0, f"{metric} missing from the results, or not positive"
    assert len(results["runs"]) == 2
    daemons = results["daemons"]  # each round has a new daemon, and the file says which
    assert len(daemons) == 2 and daemons[0]["pid"] != daemons[1]["pid"]
    assert all(d["durability"] == "DURABILITY_FSYNC" for d in daemons)
    assert results["daemon"] == daemons[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_other_cpu_counts_every_other_process_and_leaves_ours_out() -> None:
    """What the noise warning rests on: a process that started after the first
    snapshot counts whole; the ones named as ours, and this one, do not."""
    before = processes_cpu_seconds()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "print('done', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        child_cpu = cpu_seconds(child.pid)
        assert child_cpu >= 0.25
        with_child = other_processes_cpu(before, [], wall=1.0)
        without = other_processes_cpu(before, [child.pid], wall=1.0)
        assert with_child - without == pytest.approx(child_cpu, abs=0.05)
        assert 0.0 <= without < with_child
    finally:
        child.kill()
        child.wait(10)


@pytest.mark.slow
def test_a_round_keeps_what_it_measured_when_a_later_phase_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The phases before the failure are in the results file; the failure is an
    error, and the exit status says so."""
    import signal

    import bench

    def fail(self: bench.Bench, events: int) -> None:
        raise RuntimeError("injected failure before the replay")

    monkeypatch.setattr(bench.Bench, "fill", fail)
    out = tmp_path / "results.json"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        status = bench.main(["--quick", "--out", str(out), "--tmp-dir", str(tmp_path)])
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert status == 1
    results = json.loads(out.read_text())
    assert any("injected failure" in e for e in results["errors"]), results["errors"]
    (measured,) = results["runs"]
    for metric in ("lmdb1_commits_per_s", "append_seq_p50_ms", "append_conc_rate", "batch1_rate"):
        assert measured.get(metric, 0) > 0, metric
    assert "replay_rate" not in measured and "get_p99_ms" not in measured
    assert results["medians"]["batch1_rate"] == measured["batch1_rate"]


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or _fs_type(Path("/dev/shm")) != "tmpfs",
    reason="needs /dev/shm on tmpfs",
)
def test_perf_refuses_a_work_dir_on_tmpfs() -> None:
    """fsync does nothing on tmpfs: the harness says so and starts nothing."""
    proc = subprocess.run(
        [sys.executable, "perf/bench.py", "--quick", "--tmp-dir", "/dev/shm"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tmpfs, where fsync does nothing" in proc.stderr
    assert "starting" not in proc.stderr  # no daemon, no clients


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_daemon_cpu_reports_each_thread(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "perf/daemon_cpu.py", "--calls", "30", "--rounds", "1", "--events", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    echo, daemon = proc.stdout.split("daemon, append of 2 event(s):")
    assert "echo server, empty call:" in echo and "main" in echo
    rows = {line.split()[0]: line.split()[1:] for line in daemon.splitlines()[2:] if line.strip()}
    for name in ("main", "lh-writer", "event_engine", "all"):
        assert name in rows, daemon
    assert float(rows["lh-writer"][0]) > 0  # the writer did work for the appends


@pytest.mark.slow
def test_append_rounds_runs_each_source_s_daemon(tmp_path: Path) -> None:
    # Another checkout's code, told apart by its version string.
    alt = tmp_path / "alt"
    shutil.copytree(
        ROOT / "lighthouse_store",
        alt / "lighthouse_store",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    init = alt / "lighthouse_store" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', '"0.0.0-alt"'))
    proc = subprocess.run(
        [
            sys.executable,
            "perf/append_rounds.py",
            "--source=.",
            f"--source={alt}",
            "--events",
            "2",
            "--rounds",
            "1",
            "--calls",
            "20",
            "--repeat",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2, proc.stdout
    assert f"[{ROOT} defaults] (version {__version__})" in lines[0]
    assert f"[{alt} defaults] (version 0.0.0-alt)" in lines[1]

    bad = subprocess.run(
        [sys.executable, "perf/append_rounds.py", f"--source={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no lighthouse_store package there" in bad.stderr


@pytest.mark.slow
def test_append_rounds_measures_delivery_and_group_commit_per_cell() -> None:
    """Each cell's daemon, with --workers 2 the delivery on the subscriber's
    worker and on another, the group-commit ratio, and the medians at the end."""
    proc = subprocess.run(
        [sys.executable, "perf/append_rounds.py", "--config=--workers=1",
         "--config=--workers=2", "--workload", "delivery", "--workload", "group",
         "--calls", "20", "--delivery-events", "20", "--window", "0.3", "--repeat", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    # Cells alternate, the order flipping each repeat.
    assert [r.split("]")[0] for r in runs] == [
        "run 1 [--workers=1", "run 1 [--workers=2", "run 2 [--workers=2", "run 2 [--workers=1",
    ]  # fmt: skip
    for run in runs:
        assert "delivery" in run and "no group commit" in run
        assert ("other worker: delivery p50" in run) is ("--workers=2" in run)
    medians = lines[lines.index("medians over the repeats:") + 1 :]
    one, two = (dict(_numbers(line)) for line in medians)
    for m in (one, two):
        assert m["delivery_p50_ms"] > 0 and m["group_vs_nogroup"] > 0
        assert m["group_appends_per_commit"] >= 1 and m["nogroup_appends_per_commit"] == 1
    assert "other_worker_p50_ms" not in one and two["other_worker_p50_ms"] > 0


def _numbers(line: str) -> list[tuple[str, float]]:
    """The ``name value`` pairs of a medians line of append_rounds.py."""
    pairs = line.split("] ", 1)[1].split(", ")
    return [(k, float(v.replace(",", ""))) for k, v in (p.rsplit(" ", 1) for p in pairs)]
