"""Side-by-side measurements: their metric names, ratios, targets and table.

Two kinds, measured by ``comparison_phases.py`` in every round, interleaved:

* ``peer``: ours and another event store (``--peer NAME``), each through its
  own Python client; systems ``lighthouse`` and the peer's name; the ratio is
  ours over the peer's;
* ``cmp``: our daemon started with different flags (``--compare-config``,
  ``--compare-workers``), through the harness's own clients; systems are the
  configurations' labels; the ratio is each one's over the first's.

A system's metric is ``<kind>_<system>_<metric>`` (e.g. ``peer_umadb_conc_rate``),
a ratio ``<kind>_<subject>_vs_<base>_<metric>``, a latency difference
``<kind>_<subject>_minus_<base>_<metric>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from report import Target, fmt

# (metric, label, unit); the ones compared between systems
METRICS: tuple[tuple[str, str, str], ...] = (
    ("seq_p50_ms", "single append p50, 1 client", "ms"),
    ("seq_p99_ms", "single append p99, 1 client", "ms"),
    ("conc_rate", "8 concurrent appenders", "ev/s"),
    ("batch1_rate", "100-event batches, 1 client", "ev/s"),
    ("batch2_rate", "100-event batches, 2 clients", "ev/s"),
    ("replay_rate", "full replay", "ev/s"),
    ("delivery_same_p50_ms", "delivery p50, same worker", "ms"),
    ("delivery_same_p99_ms", "delivery p99, same worker", "ms"),
    ("delivery_other_p50_ms", "delivery p50, other worker", "ms"),
    ("delivery_other_p99_ms", "delivery p99, other worker", "ms"),
)
# (metric, label, unit); shown, not compared
CPU_METRICS: tuple[tuple[str, str, str], ...] = (
    ("conc_server_cpu", "server CPU, 8 appenders", "cores"),
    ("conc_clients_cpu", "clients CPU, 8 appenders", "cores"),
    ("batch2_server_cpu", "server CPU, batches 2 clients", "cores"),
    ("batch2_clients_cpu", "clients CPU, batches 2 clients", "cores"),
    ("delivery_other_vs_same_p50", "delivery p50, other / same", "x"),
    ("delivery_other_connections", "connections to another worker", "x"),
)
OURS = "lighthouse"

# The targets of issue 15 that need a peer or a second configuration. A missed
# one is reported, but does not make --strict fail (that is for SPEC §6).
TARGETS = [
    Target("peer_lighthouse_vs_umadb_conc_rate", ">=", 0.6, "8 appenders >= 0.6x UmaDB", "issue"),
    Target(
        "peer_lighthouse_vs_umadb_batch2_rate",
        ">=",
        1.0,
        "100-event batches, 2 clients >= 1.0x UmaDB",
        "issue",
    ),
    Target(
        "cmp_workers2_vs_workers1_conc_rate", ">=", 1.6, "8 appenders >= 1.6x workers 1", "issue"
    ),
    Target(
        "cmp_workers2_vs_workers1_batch2_rate",
        ">=",
        1.5,
        "100-event batches, 2 clients >= 1.5x workers 1",
        "issue",
    ),
    Target(
        "cmp_workers2_minus_workers1_seq_p50_ms",
        "<=",
        0.05,
        "single append p50 <= workers 1's + 0.05 ms",
        "issue",
    ),
    Target(
        "cmp_workers2_delivery_other_p50_ms",
        "<=",
        2.0,
        "workers 2: delivery p50 <= 2 ms, append and subscriber on different workers",
        "issue",
    ),
    Target(
        "cmp_workers2_seq_p50_over_floors_ms",
        "<=",
        0.25,
        "workers 2: single append p50 <= empty RPC p50 + LMDB commit p50 + 0.25 ms",
        "issue",
    ),
]


@dataclass(frozen=True)
class Comparison:
    """One side-by-side: which systems, under which names, compared with which."""

    kind: str  # "peer" or "cmp"
    systems: tuple[str, ...]  # as in the metric names
    labels: tuple[str, ...]  # as printed
    base: str  # the system the others are divided by

    def key(self, system: str, metric: str) -> str:
        return f"{self.kind}_{system}_{metric}"

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(s for s in self.systems if s != self.base)


def peer(name: str, label: str) -> Comparison:
    """Ours against peer ``name``: ours over theirs."""
    return Comparison("peer", (OURS, name), ("ours", label), base=name)


def configs(labels: Sequence[str]) -> Comparison:
    """Daemon configurations: each over the first."""
    return Comparison("cmp", tuple(labels), tuple(labels), base=labels[0])


def config_label(text: str) -> str:
    """A configuration's name as it can stand in a metric name."""
    label = re.sub(r"[^a-z0-9]+", "", text.lower())
    if not label:
        raise ValueError(f"{text!r} makes an empty label: use letters or digits")
    return label


def ratios(values: dict[str, float], comparison: Comparison) -> dict[str, float]:
    """Ratios (and latency differences) of each subject to the base, for the
    metrics both have; plus, per system, its delivery p50 across workers over
    its delivery p50 on one, and how far its single append p50 is above the
    round's floors (empty RPC p50 + LMDB 1-put commit p50), where they are."""
    out: dict[str, float] = {}
    c, base = comparison, comparison.base
    for subject in c.subjects:
        for metric, _, unit in METRICS:
            a, b = values.get(c.key(subject, metric)), values.get(c.key(base, metric))
            if a is None or not b:
                continue
            out[f"{c.kind}_{subject}_vs_{base}_{metric}"] = a / b
            if unit == "ms":
                out[f"{c.kind}_{subject}_minus_{base}_{metric}"] = a - b
    for system in c.systems:
        same, other = (values.get(c.key(system, f"delivery_{w}_p50_ms")) for w in ("same", "other"))
        if same and other is not None:
            out[c.key(system, "delivery_other_vs_same_p50")] = other / same
    floors = [values.get("echo_seq_p50_ms"), values.get("lmdb1_commit_p50_ms")]
    if c.kind == "cmp" and None not in floors:
        for system in c.systems:
            p50 = values.get(c.key(system, "seq_p50_ms"))
            if p50 is not None:
                out[c.key(system, "seq_p50_over_floors_ms")] = p50 - sum(floors)  # type: ignore[arg-type]
    return out


def render(values: dict[str, float], comparison: Comparison, title: str) -> str:
    """The side-by-side table: each system's value, then each subject's ratio
    to the base, with the marks of the targets on that ratio; "" when nothing
    of it was measured."""
    c = comparison
    if not any(k.startswith(f"{c.kind}_") for k in values):
        return ""
    marks: dict[str, str] = {}
    for t in TARGETS:
        ok = t.check(values)
        if ok is not None:
            marks[t.key] = f"{'PASS' if ok else 'FAIL'}: issue 15 {t.op} {t.threshold:g}"
    width = max(14, *(len(label) + 2 for label in c.labels))
    base_label = c.labels[c.systems.index(c.base)]
    head = "".join(f"{label:>{width}}" for label in c.labels)
    head += "".join(
        f"{c.labels[c.systems.index(s)] + ' / ' + base_label:>{width + 6}}" for s in c.subjects
    )
    lines = [title, f"  {'':<32}{head}"]
    for metric, label, unit in METRICS + CPU_METRICS:
        cells = [values.get(c.key(s, metric)) for s in c.systems]
        if all(v is None for v in cells):
            continue
        row = f"  {label:<32}" + "".join(f"{fmt(v, unit):>{width}}" for v in cells)
        row_marks = [marks[c.key(s, metric)] for s in c.systems if c.key(s, metric) in marks]
        for s in c.subjects if (metric, label, unit) in METRICS else ():
            key = f"{c.kind}_{s}_vs_{c.base}_{metric}"
            ratio = values.get(key)
            row += f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>{width + 6}}"
            for k in (key, f"{c.kind}_{s}_minus_{c.base}_{metric}"):
                if k in marks:
                    row_marks.append(marks[k])
        if row_marks:
            row += "   [" + "; ".join(row_marks) + "]"
        lines.append(row)
    if c.kind == "cmp":
        over = [values.get(c.key(s, "seq_p50_over_floors_ms")) for s in c.systems]
        if any(v is not None for v in over):
            row = f"  {'p50 - (empty RPC + LMDB commit)':<32}" + "".join(
                f"{fmt(v, 'ms'):>{width}}" for v in over
            )
            keys = [c.key(s, "seq_p50_over_floors_ms") for s in c.systems]
            row_marks = [marks[k] for k in keys if k in marks]
            lines.append(row + ("   [" + "; ".join(row_marks) + "]" if row_marks else ""))
    lines.append(
        f"  (ratio = system / {base_label}: below 1 is better for latencies, above 1 for rates)"
    )
    return "\n".join(lines)
