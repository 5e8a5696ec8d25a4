"""The side-by-side phases (``perf/comparison_phases.py``) and their place in a
run (``perf/bench.py --peer``, ``--compare-config``): real daemons and a real
UmaDB server on 127.0.0.1, tiny counts, no speed asserted."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import bench
import comparisons
import peers
from comparison_phases import ComparisonPhases, Config
from pool import ClientPool, Run, arrangement
from subscription_phases import QUICK_SUBS
from workloads import Spec

UMADB_MISSING = peers.missing("umadb")
needs_umadb = pytest.mark.skipif(bool(UMADB_MISSING), reason=f"UmaDB peer: {UMADB_MISSING}")
CONFIGS = [Config("default", ()), Config("nogroup", ("--max-batch-appends", "1"))]


@dataclass(frozen=True)
class Tiny:
    latency_calls: int = 20
    latency_warmup: int = 2
    window_s: float = 0.2
    replay_events: int = 300
    phase_cap_s: float = 20.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


TINY_SUBS = dataclasses.replace(QUICK_SUBS, delivery_warmup=5, delivery_events=20)


@pytest.fixture(scope="module")
def pool() -> Iterator[ClientPool]:
    p = ClientPool(2)  # the delivery phase's subscriber and appender
    try:
        yield p
    finally:
        p.close()


class Recorder:
    """The phases' run function: runs on the pool, and notes each run's server
    (pid, command line) and errors."""

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        self.calls: list[tuple[str, int, list[str]]] = []
        self.failed_calls = 0
        self.fail_at = -1

    def __call__(self, phase: str, spec: Spec, arr: object, pid: int) -> Run:
        if len(self.calls) == self.fail_at:
            raise RuntimeError("injected failure")
        self.calls.append((phase, pid, _cmdline(pid)))
        run = self.pool.run(spec, arr, server_pid=pid)  # type: ignore[arg-type]
        self.failed_calls += sum(r.errors for r in run.results)
        return run


def _phases(tmp_path: Path, rec: Recorder, errors: list[str]) -> ComparisonPhases:
    arr = arrangement("asyncio", 8)
    return ComparisonPhases(
        rec, Tiny(), arr, tmp_path, [], False, errors, lambda _: None, rec.pool, TINY_SUBS
    )


def test_each_configuration_runs_on_its_own_daemon_with_its_flags_in_turn(
    tmp_path: Path, pool: ClientPool
) -> None:
    rec, errors = Recorder(pool), list[str]()
    phases = _phases(tmp_path, rec, errors)
    first = phases.configs(CONFIGS, 0)
    order0 = [cmd for _, _, cmd in rec.calls]
    rec.calls.clear()
    second = phases.configs(CONFIGS, 1)
    order1 = [cmd for _, _, cmd in rec.calls]
    assert errors == [] and rec.failed_calls == 0
    for m in (first, second):
        for label in ("default", "nogroup"):
            for metric in ("seq_p50_ms", "seq_p99_ms", "conc_rate", "batch1_rate", "batch2_rate"):
                assert m[f"cmp_{label}_{metric}"] > 0, (label, metric)
            assert f"cmp_{label}_replay_rate" not in m  # the configurations are not replayed
            # One process: delivery on its one worker only.
            assert m[f"cmp_{label}_delivery_same_p50_ms"] > 0
            assert m[f"cmp_{label}_delivery_same_connections"] == 1
            assert f"cmp_{label}_delivery_other_p50_ms" not in m
    # Each workload on both daemons back to back: default first in round 0,
    # nogroup first in round 1; the flags reached the daemon's command line.
    assert len(order0) == len(order1) == 8
    grouped = ["--max-batch-appends" in cmd for cmd in order0]
    assert grouped == [False, True] * 4
    assert ["--max-batch-appends" in cmd for cmd in order1] == [True, False] * 4
    assert all("--durability" in cmd and "fsync" in cmd for cmd in order0)
    # Stopped, and their data removed.
    assert not any(_alive(pid) for _, pid, _ in rec.calls)
    assert not any(p.name.startswith("cmp-") and p.is_dir() for p in tmp_path.iterdir())


def test_with_two_workers_delivery_is_measured_on_the_same_and_on_another_worker(
    tmp_path: Path, pool: ClientPool
) -> None:
    rec, errors = Recorder(pool), list[str]()
    configs = [Config("workers1", ("--workers", "1")), Config("workers2", ("--workers", "2"))]
    logged: list[str] = []
    phases = _phases(tmp_path, rec, errors)
    phases.log = logged.append
    m = phases.configs(configs, 0)
    assert errors == [] and rec.failed_calls == 0
    for key in (
        "cmp_workers1_delivery_same_p50_ms",
        "cmp_workers2_delivery_same_p50_ms",
        "cmp_workers2_delivery_other_p50_ms",
        "cmp_workers2_delivery_other_p99_ms",
    ):
        assert m[key] > 0, key  # fmt: skip
    assert "cmp_workers1_delivery_other_p50_ms" not in m
    assert m["cmp_workers2_delivery_other_connections"] >= 1
    # In turn: workers1's subscriber and appender, then workers2's, same worker first.
    where = [line.rsplit(",", 1)[-1].strip() for line in logged if "delivery latency" in line]
    assert where == ["on the same worker", "on the same worker", "on different workers"]
    values = m | comparisons.ratios(m, comparisons.configs(["workers1", "workers2"]))
    assert values["cmp_workers2_delivery_other_vs_same_p50"] > 0
    assert "cmp_workers2_vs_workers1_delivery_same_p50_ms" in values
    table = comparisons.render(values, comparisons.configs(["workers1", "workers2"]), "t")
    other = next(line for line in table.splitlines() if "delivery p50, other worker" in line)
    assert "issue 15 <= 2" in other  # the target's mark, on its row


@needs_umadb
def test_the_peer_phase_measures_ours_and_umadb_through_their_clients(
    tmp_path: Path, pool: ClientPool
) -> None:
    rec, errors = Recorder(pool), list[str]()
    metrics, info = _phases(tmp_path, rec, errors).peer("umadb", 0)
    assert errors == [] and rec.failed_calls == 0
    for system in ("lighthouse", "umadb"):
        for metric in ("seq_p50_ms", "conc_rate", "batch1_rate", "batch2_rate", "replay_rate"):
            assert metrics[f"peer_{system}_{metric}"] > 0, (system, metric)
    assert info["durability_verified"] is True and info["server_version"] == "0.7.8"
    servers = {pid: cmd for _, pid, cmd in rec.calls}
    assert len(servers) == 2
    assert any(Path(cmd[1]).name == "umadb" for cmd in servers.values())
    assert any("lighthouse_store" in cmd for cmd in servers.values())
    assert not any(_alive(pid) for pid in servers)
    assert not (tmp_path / "peer-0").exists()


@needs_umadb
def test_a_failing_peer_phase_stops_both_servers(
    tmp_path: Path, pool: ClientPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[peers.PeerServer] = []

    def server(name: str, work: Path) -> peers.PeerServer:
        made.append(make(name, work))
        return made[-1]

    make = peers.server
    monkeypatch.setattr(peers, "server", server)
    rec, errors = Recorder(pool), list[str]()
    rec.fail_at = 1  # after ours' single appends, before UmaDB's
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            _phases(tmp_path, rec, errors).peer("umadb", 0)
        ((_, ours, _),) = rec.calls
        (theirs,) = made
        assert theirs.pid > 0 and ours > 0
        assert not _alive(ours) and not _alive(theirs.pid)
        assert not (tmp_path / "peer-0").exists()
    finally:  # if the phase left them running, the test does not
        for pid in [p.pid for p in made] + [pid for _, pid, _ in rec.calls]:
            if pid > 0 and _alive(pid):
                os.kill(pid, signal.SIGKILL)


@needs_umadb
def test_a_run_with_a_peer_and_configurations_reports_their_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench.main end to end with the main round cut short (its floors faked):
    the side-by-side metrics, their ratios, the issue's targets, the tables."""
    floors = {"echo_seq_p50_ms": 0.3, "lmdb1_commit_p50_ms": 0.2, "append_seq_p50_ms": 0.6}

    def round_of_floors(self: bench.Bench, index: int, m: dict[str, float]) -> None:
        m |= floors

    monkeypatch.setattr(bench.Bench, "round", round_of_floors)
    monkeypatch.setattr(bench, "QUICK", bench.Sizes(20, 2, 0.2, 300, 20, 20, 5, 20.0))
    out = tmp_path / "results.json"
    handler = signal.getsignal(signal.SIGTERM)
    try:
        status = bench.main(["--quick", "--peer", "umadb", "--compare-config", "default=",
                             "--compare-config", "nogroup=--max-batch-appends 1",
                             "--out", str(out), "--tmp-dir", str(tmp_path)])  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, handler)
    printed = capsys.readouterr().out
    assert status == 0, printed
    results = json.loads(out.read_text())
    assert results["errors"] == []
    medians = results["medians"]
    for key in (
        "peer_lighthouse_vs_umadb_conc_rate",
        "peer_lighthouse_vs_umadb_batch2_rate",
        "peer_lighthouse_vs_umadb_replay_rate",
        "cmp_nogroup_vs_default_conc_rate",
        "cmp_nogroup_minus_default_seq_p50_ms",
        "cmp_default_seq_p50_over_floors_ms",
    ):
        assert key in medians, key  # fmt: skip
    assert medians["append_p50_over_floors_ms"] == pytest.approx(0.1)
    targets = {t["key"]: t for t in results["targets"]}
    assert targets["peer_lighthouse_vs_umadb_conc_rate"]["passed"] is not None
    assert targets["cmp_workers2_vs_workers1_conc_rate"]["passed"] is None  # not compared
    assert results["peer_servers"][0]["server_version"] == "0.7.8"
    assert results["compared_configs"][1] == {
        "label": "nogroup",
        "args": ["--max-batch-appends", "1"],
    }
    assert "compared with UmaDB 0.7.8" in printed and "ours / UmaDB" in printed
    assert "daemon configurations" in printed and "nogroup / default" in printed
    assert "issue 15 targets missed:" in printed
    peer = comparisons.peer("umadb", "UmaDB")
    assert set(comparisons.ratios(results["runs"][0], peer)) <= set(results["runs"][0])
