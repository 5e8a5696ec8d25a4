"""Statistics, SPEC §6 targets, the printed table and the JSON results file."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def percentile(samples: Sequence[int | float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
    return float(ordered[min(len(ordered), int(rank)) - 1])


def latency_ms(prefix: str, samples_ns: Sequence[int]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(samples_ns, 50) / 1e6,
        f"{prefix}_p95_ms": percentile(samples_ns, 95) / 1e6,
        f"{prefix}_p99_ms": percentile(samples_ns, 99) / 1e6,
        f"{prefix}_p999_ms": percentile(samples_ns, 99.9) / 1e6,
    }


def medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for run in runs for k in run})
    return {k: statistics.median([run[k] for run in runs if k in run]) for k in keys}


# -- ratios and targets -------------------------------------------------------

# name: (numerator metric, denominator metric, what it shows)
RATIOS: dict[str, tuple[str, str, str]] = {
    "append_p50_vs_empty_rpc_p50": ("append_seq_p50_ms", "echo_seq_p50_ms", "latency over gRPC"),
    "append_p99_vs_empty_rpc_p99": ("append_seq_p99_ms", "echo_seq_p99_ms", "latency over gRPC"),
    "append_conc_vs_empty_rpc_conc": (
        "append_conc_rate",
        "echo_conc_rate",
        "SPEC: >= 0.7x",
    ),
    "append_conc_vs_lmdb_1put_commits": (
        "append_conc_rate",
        "lmdb1_commits_per_s",
        "> 1: group commit beats one fsync per call",
    ),
    "group_commit_gain": (
        "append_conc_rate",
        "nogroup_conc_rate",
        "> 1: group commit beats one fsync per call (same daemon, --max-batch-appends 1)",
    ),
    "batch1_vs_lmdb_100put": ("batch1_rate", "lmdb100_events_per_s", "batch over raw storage"),
    "get_p50_vs_empty_rpc_p50": ("get_p50_ms", "echo_seq_p50_ms", "lookup over gRPC"),
    "get_p99_vs_empty_rpc_p99": ("get_p99_ms", "echo_seq_p99_ms", "lookup over gRPC"),
    # Delivery needs the append committed first: append latency is its lower bound.
    "delivery_p50_vs_append_p50": ("delivery_p50_ms", "append_seq_p50_ms", "delivery over append"),
    "delivery_p99_vs_append_p99": ("delivery_p99_ms", "append_seq_p99_ms", "delivery over append"),
    # The same, against appends measured at the same moment and at the same
    # pace (the paced appends wait for the daemon's threads to wake up:
    # RESULTS.md, "Delivery and group commit after the redesign").
    "delivery_p50_vs_paced_append_p50": (
        "delivery_p50_ms",
        "delivery_append_p50_ms",
        "delivery over the same moment's appends",
    ),
    "client_replay_vs_stubs": (
        "client_replay_rate",
        "client_stubs_replay_rate",
        "issue 15: StoreClient >= 0.8x the stubs",
    ),
}


def ratios(values: dict[str, float]) -> dict[str, float]:
    """The RATIOS, and how far the single append p50 is above the sum of its
    floors (empty RPC p50 + LMDB 1-put commit p50), where the values are there."""
    out: dict[str, float] = {}
    for name, (num, den, _) in RATIOS.items():
        if num in values and values.get(den):
            out[name] = values[num] / values[den]
    floors = ("append_seq_p50_ms", "echo_seq_p50_ms", "lmdb1_commit_p50_ms")
    if all(k in values for k in floors):
        p50, echo, commit = (values[k] for k in floors)
        out["append_p50_over_floors_ms"] = p50 - echo - commit
    client = ("client_append_p50_ms", "client_stubs_append_p50_ms")
    if all(k in values for k in client):
        out["client_append_minus_stubs_p50_ms"] = values[client[0]] - values[client[1]]
    return out


@dataclass(frozen=True)
class Target:
    key: str  # a metric or a ratio
    op: str  # "<=" or ">="
    threshold: float
    text: str
    # "target" (our SPEC §6 target), "floor" (original design) or "issue"
    # (a target of issue 15, the peer and --workers work; not part of --strict)
    source: str = "target"

    def check(self, values: dict[str, float]) -> bool | None:
        if self.key not in values:
            return None
        v = values[self.key]
        return v <= self.threshold if self.op == "<=" else v >= self.threshold


TARGETS = [
    Target("append_seq_p50_ms", "<=", 1.0, "append p50 <= 1 ms"),
    Target("append_seq_p95_ms", "<=", 5.0, "append p95 <= 5 ms", "floor"),
    Target("append_seq_p99_ms", "<=", 3.0, "append p99 <= 3 ms"),
    Target("append_seq_p999_ms", "<=", 100.0, "append p99.9 <= 100 ms", "floor"),
    Target("append_conc_rate", ">=", 2500.0, "8 clients >= 2,500 ev/s"),
    Target("append_conc_vs_empty_rpc_conc", ">=", 0.7, "8 clients >= 0.7x empty RPC rate"),
    Target("batch1_rate", ">=", 60000.0, "batched append >= 60,000 ev/s"),
    Target("replay_rate", ">=", 250000.0, "full replay >= 250,000 ev/s"),
    Target("get_p99_ms", "<=", 1.0, "GetEvent p99 <= 1 ms"),
    Target("delivery_p50_ms", "<=", 2.0, "delivery p50 <= 2 ms"),
    Target("delivery_p99_ms", "<=", 10.0, "delivery p99 <= 10 ms"),
    Target("fanout_rate", ">=", 100_000.0, "100-subscriber fan-out >= 100,000 deliveries/s"),
    Target("resume_p99_ms", "<=", 50.0, "resume from checkpoint <= 50 ms (p99)"),
    Target(
        "append_p50_over_floors_ms",
        "<=",
        0.25,
        "append p50 <= empty RPC p50 + LMDB commit p50 + 0.25 ms",
        "issue",
    ),
    Target("client_replay_vs_stubs", ">=", 0.8, "StoreClient replay >= 0.8x the stubs'", "issue"),
    Target(
        "client_append_minus_stubs_p50_ms",
        "<=",
        0.1,
        "StoreClient single append p50 <= the stubs' + 0.1 ms",
        "issue",
    ),
]
SOURCES = {"target": "target", "floor": "design floor", "issue": "issue 15"}


def evaluate(values: dict[str, float], targets: Sequence[Target] = TARGETS) -> list[dict[str, Any]]:
    return [
        {
            "target": t.text,
            "source": t.source,
            "key": t.key,
            "value": values.get(t.key),
            "op": t.op,
            "threshold": t.threshold,
            "passed": t.check(values),
        }
        for t in targets
    ]


# -- the printed table ----------------------------------------------------------

# (label, metric, unit, floor label, floor metric, floor unit)
Row = tuple[str, str, str, str, str, str]


def _rows(clients_label: str, sizes: dict[str, Any]) -> list[tuple[str, list[Row]]]:
    replay_events = sizes["replay_events"]
    sub = sizes.get("subscriptions", {})
    seq: list[Row] = [
        (f"p{p}", f"append_seq_{k}_ms", "ms", f"empty RPC p{p}", f"echo_seq_{k}_ms", "ms")
        for p, k in (("50", "p50"), ("95", "p95"), ("99", "p99"), ("99.9", "p999"))
    ]
    rpc, lmdb1 = "calls/s", "commits/s"
    seq.append(("p50 - (empty RPC + LMDB commit)", "append_p50_over_floors_ms", "ms", "", "", ""))
    return [
        ("single-event append, 1 client, sequential", seq),
        (
            f"8 concurrent single-event appenders ({clients_label})",
            [
                ("rate", "append_conc_rate", "ev/s", "empty RPC rate", "echo_conc_rate", rpc),
                ("rate", "append_conc_rate", "ev/s", "1-put fsync", "lmdb1_commits_per_s", lmdb1),
                (
                    "rate",
                    "append_conc_rate",
                    "ev/s",
                    "no group commit",
                    "nogroup_conc_rate",
                    "ev/s",
                ),
                ("call p50", "append_conc_p50_ms", "ms", "empty RPC p50", "echo_conc_p50_ms", "ms"),
                ("call p99", "append_conc_p99_ms", "ms", "empty RPC p99", "echo_conc_p99_ms", "ms"),
                (
                    "server CPU",
                    "append_conc_server_cpu",
                    "cores",
                    "echo",
                    "echo_conc_server_cpu",
                    "cores",
                ),
                (
                    "clients CPU",
                    "append_conc_clients_cpu",
                    "cores",
                    "echo",
                    "echo_conc_clients_cpu",
                    "cores",
                ),
                ("appends per LMDB commit", "append_conc_appends_per_commit", "x", "", "", ""),
            ],
        ),
        (
            "batched append, 100 events per call",
            [
                ("1 client", "batch1_rate", "ev/s", "LMDB 100-put", "lmdb100_events_per_s", "ev/s"),
                (
                    "2 clients",
                    "batch2_rate",
                    "ev/s",
                    "LMDB 100-put",
                    "lmdb100_events_per_s",
                    "ev/s",
                ),
                (
                    "ordered ids, 2nd daemon",
                    "batch1_v7_rate",
                    "ev/s",
                    "",
                    "",
                    "",
                ),
                (
                    "random ids, 2nd daemon",
                    "batch1_v4_rate",
                    "ev/s",
                    "ordered ids there",
                    "batch1_v7_rate",
                    "ev/s",
                ),
                ("call p50 (1 client)", "batch1_call_p50_ms", "ms", "", "", ""),
                ("server CPU (1 client)", "batch1_server_cpu", "cores", "", "", ""),
                ("server CPU (2 clients)", "batch2_server_cpu", "cores", "", "", ""),
            ],
        ),
        (
            f"full replay of {replay_events:,} events ($all Read, events counted by the client)",
            [("rate", "replay_rate", "ev/s", "", "", "")],
        ),
        (
            "GetEvent by id (random ids of written events), 1 client, sequential",
            [
                ("p50", "get_p50_ms", "ms", "empty RPC p50", "echo_seq_p50_ms", "ms"),
                ("p99", "get_p99_ms", "ms", "empty RPC p99", "echo_seq_p99_ms", "ms"),
            ],
        ),
        (
            f"append-to-subscriber delivery: 1 subscriber (from_end), 1 client appending"
            f" {sub.get('delivery_rate', 0):g} single events/s, send to receive",
            [
                ("p50", "delivery_p50_ms", "ms", "append p50", "append_seq_p50_ms", "ms"),
                (
                    "p50",
                    "delivery_p50_ms",
                    "ms",
                    "paced appends' p50",
                    "delivery_append_p50_ms",
                    "ms",
                ),
                ("p99", "delivery_p99_ms", "ms", "append p99", "append_seq_p99_ms", "ms"),
                ("max", "delivery_max_ms", "ms", "", "", ""),
                ("server CPU", "delivery_server_cpu", "cores", "", "", ""),
            ],
        ),
        (
            f"fan-out: {sub.get('fanout_subscribers', 0)} subscribers (from_end) in"
            f" {sub.get('fanout_processes', 0)} client processes, 1 writer appending"
            f" {sub.get('fanout_events', 0):,} events in batches of {sub.get('fanout_batch', 0)}",
            [
                ("deliveries", "fanout_rate", "deliveries/s", "", "", ""),
                ("first append to last delivery", "fanout_s", "s", "", "", ""),
                ("writer's append rate", "fanout_write_rate", "ev/s", "", "", ""),
                ("events per message", "fanout_events_per_message", "x", "", "", ""),
                ("server CPU", "fanout_server_cpu", "cores", "", "", ""),
                ("clients CPU (all)", "fanout_clients_cpu", "cores", "", "", ""),
                ("busiest client process", "fanout_busiest_client_cpu", "cores", "", "", ""),
            ],
        ),
        (
            f"resume a named consumer: new stream to first event, warm channel,"
            f" {sub.get('resume_repeats', 0)} resumes",
            [
                ("p50", "resume_p50_ms", "ms", "", "", ""),
                ("p99", "resume_p99_ms", "ms", "", "", ""),
                ("events in the first message", "resume_first_batch_events", "x", "", "", ""),
                ("ack to checkpoint stored", "resume_ack_stored_ms", "ms", "", "", ""),
            ],
        ),
        (
            "the client library: StoreClient against the stubs, same daemon"
            " (appends in turn, replays A B B A)",
            [
                (
                    "single append p50",
                    "client_append_p50_ms",
                    "ms",
                    "stubs' p50",
                    "client_stubs_append_p50_ms",
                    "ms",
                ),
                ("p50 - stubs' p50", "client_append_minus_stubs_p50_ms", "ms", "", "", ""),
                (
                    "full replay",
                    "client_replay_rate",
                    "ev/s",
                    "stubs' replay",
                    "client_stubs_replay_rate",
                    "ev/s",
                ),
                (
                    "replay: client CPU per event",
                    "client_replay_cpu_ns",
                    "ns",
                    "stubs'",
                    "client_stubs_replay_cpu_ns",
                    "ns",
                ),
            ],
        ),
        (
            "floors (same run)",
            [
                ("empty RPC p50, 1 client", "echo_seq_p50_ms", "ms", "", "", ""),
                ("empty RPC p99, 1 client", "echo_seq_p99_ms", "ms", "", "", ""),
                ("empty RPC rate, 8 clients", "echo_conc_rate", rpc, "", "", ""),
                ("LMDB 1-put fsync commit p50", "lmdb1_commit_p50_ms", "ms", "", "", ""),
                ("LMDB 1-put fsync commits", "lmdb1_commits_per_s", lmdb1, "", "", ""),
                ("LMDB 100-put fsync commits", "lmdb100_events_per_s", "ev/s", "", "", ""),
                ("CPU: 2M Python additions", "cpu_loop_ms", "ms", "", "", ""),
            ],
        ),
    ]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "cores":
        return f"{value:.2f} cores"
    if unit == "x":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def render(values: dict[str, float], clients_label: str, sizes: dict[str, Any]) -> str:
    """The results table: value, floor, ratio, and the target marks of each row."""
    marks: dict[str, list[str]] = {}
    for t in TARGETS:
        ok = t.check(values)
        if ok is not None:
            mark = "PASS" if ok else "FAIL"
            kind = SOURCES[t.source]
            marks.setdefault(t.key, []).append(f"{mark}: {kind} {t.op} {_num(t.threshold)}")
    # The ratio target is shown on the row that computes that ratio.
    row_ratio = {
        ("append_conc_rate", "echo_conc_rate"): "append_conc_vs_empty_rpc_conc",
        ("client_replay_rate", "client_stubs_replay_rate"): "client_replay_vs_stubs",
    }
    lines: list[str] = []
    for title, rows in _rows(clients_label, sizes):
        lines.append(title)
        for label, key, unit, floor_label, floor_key, floor_unit in rows:
            value = values.get(key)
            cells = [f"  {label:<28}{fmt(value, unit):>16}"]
            row_marks = marks.pop(key, [])
            if floor_key:
                floor = values.get(floor_key)
                ratio = f"{value / floor:.2f}x" if value is not None and floor else "-"
                cells.append(f"   {ratio:>7} of {floor_label} ({fmt(floor, floor_unit)})")
                ratio_key = row_ratio.get((key, floor_key))
                if ratio_key:
                    row_marks += [m.replace("target", "ratio") for m in marks.pop(ratio_key, [])]
            if row_marks:
                cells.append("   [" + "; ".join(row_marks) + "]")
            lines.append("".join(cells))
    return "\n".join(lines)


def summary(
    doc: dict[str, Any], values: dict[str, float], noisy_cpu: float, sections: Sequence[str] = ()
) -> str:
    """Everything printed at the end of a run; ``sections`` (the side-by-side
    tables) after the main table."""
    m, d, runs = doc["machine"], doc.get("daemon", {}), len(doc["runs"])
    lines = [
        f"Lighthouse Store perf ({doc['mode']}, {runs} round{'s' if runs != 1 else ''}"
        f"{', medians' if runs > 1 else ''}; 1 KiB events; elapsed {doc['elapsed_s']} s)",
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, "
        f"grpcio {m['grpcio']}, lmdb {m['lmdb']} (LMDB {m['liblmdb']}), "
        f"data on {m['work_dir_fs']}, load {m['loadavg_at_start'][0]:.2f}",
        f"daemon: {d.get('server_version', '?')}, {d.get('durability', '?')}; "
        f"concurrent clients: {doc['concurrent_clients']}",
        "sizes: " + json.dumps(doc["sizes"]),
    ]
    if runs:
        lines.append(render(values, doc["concurrent_clients"], doc["sizes"]))
        lines += [section for section in sections if section]
    if runs > 1:
        lines.append(per_round(doc["runs"]))
    if "client_arrangements" in doc:
        lines.append("client arrangements (8 clients; CPU in cores):")
        for mode, r in doc["client_arrangements"].items():
            lines.append(
                f"  {mode:<10} empty RPC {r['echo_rate']:>6,.0f}/s (server"
                f" {r['echo_server_cpu']:.2f}, clients {r['echo_clients_cpu']:.2f})"
                f"   append {r['append_rate']:>6,.0f}/s (server {r['append_server_cpu']:.2f},"
                f" clients {r['append_clients_cpu']:.2f})   ratio {r['ratio']:.2f}x"
            )
    other = doc["noise"]["max_other_cpu"]
    if other > noisy_cpu:
        lines.append(
            f"WARNING: other processes kept up to {other:.2f} cores busy during a"
            " throughput window: the machine was not quiet, the numbers are unreliable"
        )
    missed = [t["target"] for t in doc["targets"] if t["source"] == "target" and not t["passed"]]
    if runs:
        lines.append(f"SPEC §6 targets missed: {', '.join(missed) if missed else 'none'}")
    issue = [t for t in doc["targets"] if t["source"] == "issue" and t["passed"] is not None]
    if issue:
        missed = [t["target"] for t in issue if not t["passed"]]
        lines.append(f"issue 15 targets missed: {', '.join(missed) if missed else 'none'}")
    lines += [f"ERROR: {err}" for err in doc["errors"]]
    return "\n".join(lines)


# Results whose medians can hide a trend or an outlier (this machine's speed
# changes over minutes): each round's value is printed as well. The unit says
# how: "k" for events/s in thousands, "ms" for latencies.
_PER_ROUND = (
    ("cpu_loop_ms", "CPU loop", "ms"),
    ("echo_seq_p50_ms", "empty RPC p50", "ms"),
    ("append_seq_p50_ms", "single append p50", "ms"),
    ("append_conc_rate", "8 appenders", "k"),
    ("batch1_rate", "batches 1 client", "k"),
    ("batch2_rate", "batches 2 clients", "k"),
    ("batch1_v7_rate", "batches ordered ids (2nd daemon)", "k"),
    ("batch1_v4_rate", "random ids (2nd daemon)", "k"),
)


def per_round(runs: Sequence[dict[str, float]]) -> str:
    """One line: each round's value of the results in ``_PER_ROUND``, in round
    order; "-" where a round has no value."""
    parts = []
    for key, label, unit in _PER_ROUND:
        if any(key in r for r in runs):
            fmt = _PER_ROUND_FORMAT[unit]
            values = ", ".join(fmt(r[key]) if key in r else "-" for r in runs)
            parts.append(f"{label} {values}" + (" ms" if unit == "ms" else ""))
    return "per round (in order; k = thousand events/s): " + "; ".join(parts)


_PER_ROUND_FORMAT: dict[str, Callable[[float], str]] = {
    "k": lambda x: f"{x / 1000:.1f}k",
    "ms": lambda x: f"{x:.2f}" if x < 10 else f"{x:.0f}",
}


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:g}"


# -- the results file ------------------------------------------------------------


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
