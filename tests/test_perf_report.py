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
