"""Pure logic of the perf harness's report (``perf/report.py``): no daemon."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import report


def test_per_round_lists_each_rounds_results_in_order() -> None:
    runs = [
        {
            "cpu_loop_ms": 121.4,
            "append_seq_p50_ms": 0.8731,
            "append_conc_rate": 3100.0,
            "batch1_rate": 61346.8,
            "batch2_rate": 70162.2,
        },
        {
            "append_seq_p50_ms": 1.0249,
            "append_conc_rate": 3050.0,
            "batch1_rate": 55558.7,
            "batch2_rate": 63008.0,
        },
        {"append_conc_rate": 2990.0, "batch1_rate": 50843.3},
    ]
    assert report.per_round(runs) == (
        "per round (in order; k = thousand events/s): CPU loop 121, -, - ms; "
        "single append p50 0.87, 1.02, - ms; "
        "8 appenders 3.1k, 3.0k, 3.0k; "
        "batches 1 client 61.3k, 55.6k, 50.8k; batches 2 clients 70.2k, 63.0k, -"
    )


def test_the_client_library_is_judged_against_the_stubs_of_the_same_round() -> None:
    values = {
        "client_append_p50_ms": 1.02,
        "client_stubs_append_p50_ms": 0.95,
        "client_replay_rate": 240_000.0,
        "client_stubs_replay_rate": 320_000.0,
    }
    values |= report.ratios(values)
    assert abs(values["client_append_minus_stubs_p50_ms"] - 0.07) < 1e-9
    assert values["client_replay_vs_stubs"] == 0.75
    passed = {t["key"]: t["passed"] for t in report.evaluate(values)}
    assert passed["client_append_minus_stubs_p50_ms"] is True
    assert passed["client_replay_vs_stubs"] is False
    table = report.render(values, "x", {"replay_events": 1, "subscriptions": {}})
    assert "0.75x of stubs' replay (320,000 ev/s)   [FAIL: issue 15 >= 0.8]" in table
    assert "p50 - stubs' p50                    0.070 ms   [PASS: issue 15 <= 0.1]" in table
