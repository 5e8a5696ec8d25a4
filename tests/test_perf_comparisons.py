"""Pure logic of the side-by-side measurements (``perf/comparisons.py``, the
configurations of ``perf/comparison_phases.py``) and the floors' sum in
``perf/report.py``: no daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import comparison_phases
import comparisons
import report

UMADB = comparisons.peer("umadb", "UmaDB")
WORKERS = comparisons.configs(["workers1", "workers2"])


def test_peer_ratios_are_ours_over_the_peers() -> None:
    values = {
        "peer_lighthouse_seq_p50_ms": 0.9,
        "peer_umadb_seq_p50_ms": 0.6,
        "peer_lighthouse_conc_rate": 3000.0,
        "peer_umadb_conc_rate": 4000.0,
        "peer_lighthouse_batch2_rate": 50_000.0,
        "peer_umadb_batch2_rate": 40_000.0,
        "peer_lighthouse_replay_rate": 90_000.0,  # the peer has none: no ratio
    }
    out = comparisons.ratios(values, UMADB)
    assert out == {
        "peer_lighthouse_vs_umadb_seq_p50_ms": pytest.approx(1.5),
        "peer_lighthouse_minus_umadb_seq_p50_ms": pytest.approx(0.3),
        "peer_lighthouse_vs_umadb_conc_rate": pytest.approx(0.75),
        "peer_lighthouse_vs_umadb_batch2_rate": pytest.approx(1.25),
    }


def test_configuration_ratios_are_each_over_the_first_and_p50s_over_the_floors() -> None:
    three = comparisons.configs(["a", "b", "c"])
    values = {
        "echo_seq_p50_ms": 0.30,
        "lmdb1_commit_p50_ms": 0.20,
        "cmp_a_seq_p50_ms": 0.70,
        "cmp_b_seq_p50_ms": 0.80,
        "cmp_c_seq_p50_ms": 0.65,
        "cmp_a_conc_rate": 2000.0,
        "cmp_b_conc_rate": 3400.0,
        "cmp_c_conc_rate": 0.0,
        "cmp_a_batch1_rate": 0.0,  # a zero base gives no ratio
        "cmp_b_batch1_rate": 50_000.0,
    }
    out = comparisons.ratios(values, three)
    assert out == {
        "cmp_b_vs_a_seq_p50_ms": pytest.approx(0.8 / 0.7),
        "cmp_b_minus_a_seq_p50_ms": pytest.approx(0.1),
        "cmp_c_vs_a_seq_p50_ms": pytest.approx(0.65 / 0.7),
        "cmp_c_minus_a_seq_p50_ms": pytest.approx(-0.05),
        "cmp_b_vs_a_conc_rate": pytest.approx(1.7),
        "cmp_c_vs_a_conc_rate": 0.0,
        "cmp_a_seq_p50_over_floors_ms": pytest.approx(0.2),
        "cmp_b_seq_p50_over_floors_ms": pytest.approx(0.3),
        "cmp_c_seq_p50_over_floors_ms": pytest.approx(0.15),
    }
    # Without the round's floors, no sum over them.
    del values["lmdb1_commit_p50_ms"]
    assert not any(k.endswith("over_floors_ms") for k in comparisons.ratios(values, three))


def test_the_main_append_p50_over_its_floors_and_its_target() -> None:
    values = {"append_seq_p50_ms": 0.80, "echo_seq_p50_ms": 0.35, "lmdb1_commit_p50_ms": 0.25}
    out = report.ratios(values)
    assert out["append_p50_over_floors_ms"] == pytest.approx(0.20)
    (target,) = [t for t in report.evaluate(out) if t["key"] == "append_p50_over_floors_ms"]
    assert target["passed"] is True and target["source"] == "issue"
    values["append_seq_p50_ms"] = 0.90
    over = report.ratios(values)
    assert over["append_p50_over_floors_ms"] == pytest.approx(0.30)
    (floors,) = [t for t in report.TARGETS if t.key == "append_p50_over_floors_ms"]
    assert floors.check(over) is False
    assert "append_p50_over_floors_ms" not in report.ratios({"append_seq_p50_ms": 0.8})


@pytest.mark.parametrize(
    ("ratio", "passed"),
    [(1.6, True), (1.59, False)],
)
def test_the_workers_targets_are_checked_on_the_ratios(ratio: float, passed: bool) -> None:
    values = {
        "cmp_workers1_conc_rate": 2000.0,
        "cmp_workers2_conc_rate": 2000.0 * ratio,
        "cmp_workers1_seq_p50_ms": 0.70,
        "cmp_workers2_seq_p50_ms": 0.76,  # 0.06 ms more: over the 0.05 allowed
    }
    values |= comparisons.ratios(values, WORKERS)
    results = {t["key"]: t["passed"] for t in report.evaluate(values, comparisons.TARGETS)}
    assert results["cmp_workers2_vs_workers1_conc_rate"] is passed
    assert results["cmp_workers2_minus_workers1_seq_p50_ms"] is False
    assert results["cmp_workers2_vs_workers1_batch2_rate"] is None  # not measured
    table = comparisons.render(values, WORKERS, "workers")
    row = next(line for line in table.splitlines() if "8 concurrent appenders" in line)
    assert f"{ratio:.2f}x" in row
    assert f"[{'PASS' if passed else 'FAIL'}: issue 15 >= 1.6]" in row


def test_the_peer_table_shows_each_system_and_ours_over_theirs() -> None:
    values = {
        "peer_lighthouse_conc_rate": 3000.0,
        "peer_umadb_conc_rate": 6000.0,
        "peer_lighthouse_conc_server_cpu": 0.95,
        "peer_umadb_conc_server_cpu": 0.40,
    }
    values |= comparisons.ratios(values, UMADB)
    lines = comparisons.render(values, UMADB, "compared with UmaDB").splitlines()
    assert lines[0] == "compared with UmaDB"
    assert lines[1].split() == ["ours", "UmaDB", "ours", "/", "UmaDB"]
    conc = next(line for line in lines if "8 concurrent appenders" in line)
    assert conc.split()[3:] == ["3,000", "ev/s", "6,000", "ev/s", "0.50x", "[FAIL:", "issue",
                                "15", ">=", "0.6]"]  # fmt: skip
    cpu = next(line for line in lines if "server CPU, 8 appenders" in line)
    assert "0.95 cores" in cpu and "0.40 cores" in cpu and "x" not in cpu.split("cores")[-1]
    assert not any("single append" in line for line in lines)  # not measured: no row


def test_summary_lists_the_missed_issue_targets_it_could_check() -> None:
    values = {"peer_lighthouse_vs_umadb_conc_rate": 0.5}
    doc = {
        "mode": "quick",
        "runs": [values],
        "elapsed_s": 1.0,
        "machine": {"nproc": 2, "cpu_model": "x", "python": "3", "grpcio": "1", "lmdb": "1",
                    "liblmdb": "1", "work_dir_fs": "ext4", "loadavg_at_start": [0.0]},
        "concurrent_clients": "c",
        "sizes": {"replay_events": 10},
        "noise": {"max_other_cpu": 0.0},
        "errors": [],
        "targets": report.evaluate(values, [*report.TARGETS, *comparisons.TARGETS]),
    }  # fmt: skip
    text = report.summary(doc, values, 0.25, ["SIDE BY SIDE"])
    assert "SIDE BY SIDE" in text
    assert "issue 15 targets missed: 8 appenders >= 0.6x UmaDB\n" in text + "\n"


def test_configurations_from_the_command_line() -> None:
    parse = comparison_phases.parse_config
    assert parse("nogroup=--max-batch-appends 1") == comparison_phases.Config(
        "nogroup", ("--max-batch-appends", "1")
    )
    assert parse("Default=") == comparison_phases.Config("default", ())
    assert parse("w-2=--workers=2") == comparison_phases.Config("w2", ("--workers=2",))
    assert comparison_phases.worker_configs("1, 2") == [
        comparison_phases.Config("workers1", ("--workers", "1")),
        comparison_phases.Config("workers2", ("--workers", "2")),
    ]
    for bad in ("--workers 2", "=--workers 2", "-=x"):
        with pytest.raises(ValueError):
            parse(bad)
    for bad in ("1,x", "0,2", ""):
        with pytest.raises(ValueError):
            comparison_phases.worker_configs(bad)


def test_the_metrics_comparison_marks_the_monitoring_overhead_target() -> None:
    configs = comparison_phases.metrics_configs()
    assert [(c.label, c.args) for c in configs] == [
        ("metricsoff", ("--metrics", "off")),
        ("metricson", ("--metrics", "on")),
    ]
    cmp = comparisons.configs([c.label for c in configs])
    for on, passed in ((98.5, True), (97.5, False)):
        values = {"cmp_metricsoff_conc_rate": 100.0, "cmp_metricson_conc_rate": on}
        values |= comparisons.ratios(values, cmp)
        (row,) = [r for r in comparisons.render(values, cmp, "").splitlines() if "8 conc" in r]
        assert f"[{'PASS' if passed else 'FAIL'}: SPEC §6 overhead >= 0.98]" in row
        (target,) = [
            t for t in report.evaluate(values, comparisons.TARGETS) if t["passed"] is not None
        ]
        assert target["source"] == "overhead" and target["passed"] is passed
