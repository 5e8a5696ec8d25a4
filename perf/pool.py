"""Client worker processes, and how concurrent clients are spread over them.

An :class:`Arrangement` says how N clients run:

* ``processes``: N processes, each one synchronous stub (one call in flight);
* ``threads``:   one process, N threads, each a synchronous stub;
* ``asyncio``:   one process, N ``grpc.aio`` tasks on one event loop.

:class:`ClientPool` starts the processes once (spawn: gRPC does not survive
fork) and runs every measurement on them: prepare (connect, warm up) -> all
ready -> one shared start instant (``CLOCK_MONOTONIC`` is system-wide on Linux)
-> results, plus the CPU the server, the clients and the whole machine used
while the clients ran.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from workloads import RPC_TIMEOUT_S, Result, Spec, sleep_until, worker_main

Style = Literal["sync", "asyncio"]


@dataclass(frozen=True)
class Arrangement:
    """How N concurrent clients are spread over processes."""

    mode: str
    processes: int
    per_process: int
    style: Style

    @property
    def clients(self) -> int:
        return self.processes * self.per_process

    def describe(self) -> str:
        if self.mode == "processes":
            return f"{self.processes} client processes x 1 sync stub each"
        if self.mode == "threads":
            return f"1 client process x {self.per_process} threads (sync stubs)"
        return f"1 client process x {self.per_process} grpc.aio tasks"


MODES = ("processes", "threads", "asyncio")
SEQUENTIAL = Arrangement("sequential", 1, 1, "sync")


def arrangement(mode: str, clients: int) -> Arrangement:
    if mode == "processes":
        return Arrangement(mode, clients, 1, "sync")
    if mode == "threads":
        return Arrangement(mode, 1, clients, "sync")
    if mode == "asyncio":
        return Arrangement(mode, 1, clients, "asyncio")
    raise ValueError(f"unknown client arrangement {mode!r}")


@dataclass(frozen=True)
class Run:
    """The Results of every client of a run, and the CPU time used while it ran."""

    results: list[Result]
    server_cpu: float  # CPU seconds per wall second (1.0 = one core busy), with its children
    clients_cpu: float  # the same, summed over the client processes
    other_cpu: float  # the same, for the other processes (other_processes_cpu)
    probe_delta: float = 0.0  # how much the caller's probe counter grew meanwhile


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (Linux /proc); 0.0 if unknown."""
    if pid <= 0:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a daemon's worker
    processes), from each process's parent in /proc; [] for pid <= 0."""
    if pid <= 0:
        return []
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def latencies(run: Run) -> list[int]:
    """Every timed call's latency (ns) of every client of a run."""
    return [x for r in run.results for x in r.latencies_ns]


def rate(run: Run, calls: bool = False) -> float:
    """Events (or calls) per second over the run: from the shared start
    instant to the last client's last completed call."""
    results = run.results
    start = min(r.start_ns for r in results)
    end = max(r.end_ns for r in results)
    total = sum(r.calls if calls else r.events for r in results)
    return total / ((end - start) / 1e9) if end > start else 0.0


def processes_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every process now running, by PID (Linux /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    return {int(n): cpu_seconds(int(n)) for n in names if n.isdigit()}


def other_processes_cpu(before: dict[int, float], ours: Iterable[int], wall: float) -> float:
    """Cores kept busy since ``before`` (``processes_cpu_seconds()``) by the
    processes running now other than ``ours`` and this one: what else loaded
    the machine meanwhile. Not the machine's busy time less ours: /proc/stat
    also counts the kernel's own time, which belongs to no process and grows
    with wake-ups (on the dev VM, 0.3-0.7 cores in the delivery phase's 500
    fsync'd appends per second, while no other process ran)."""
    skip = {*ours, os.getpid()}
    now = processes_cpu_seconds()
    busy = sum(max(0.0, c - before.get(p, 0.0)) for p, c in now.items() if p not in skip)
    return busy / wall


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine, all cores (Linux /proc/stat); 0.0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class ClientPool:
    """Client worker processes, started once and reused by every run."""

    def __init__(self, processes: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # gRPC does not survive fork
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for i in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), name=f"perf-client-{i}")
            proc.daemon = True
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [int(p.pid) for p in self._procs]

    @property
    def size(self) -> int:
        return len(self._procs)

    def run(
        self,
        spec: Spec,
        arr: Arrangement,
        server_pid: int = 0,
        probe: Callable[[], float] | None = None,
    ) -> Run:
        """Run spec on every client of arr: one Result per client, CPU use, probe delta."""
        if arr.processes > len(self._conns):
            raise ValueError(f"pool has {len(self._conns)} processes, run needs {arr.processes}")
        conns = self._conns[: arr.processes]
        pids = self.pids[: arr.processes]
        for i, conn in enumerate(conns):
            conn.send(("task", spec, arr.style, i * arr.per_process, arr.per_process))
        prepare_timeout = RPC_TIMEOUT_S * 2 + spec.warmup_calls * 1.0
        for conn in conns:
            self._expect(conn, "ready", prepare_timeout)
        # Give every client time to see the start instant before it passes.
        start_ns = time.monotonic_ns() + 100_000_000
        for conn in conns:
            conn.send(("go", start_ns))
        processes0 = processes_cpu_seconds()
        servers = process_tree(server_pid)  # the server and its worker processes, if any
        sleep_until(start_ns)
        server0 = tree_cpu_seconds(servers)
        clients0 = sum(cpu_seconds(pid) for pid in pids)
        probe0 = probe() if probe else 0.0
        limit = spec.duration_s + RPC_TIMEOUT_S * 6
        results: list[Result] = []
        for conn in conns:
            results.extend(self._expect(conn, "result", limit))
        end_ns = max(r.end_ns for r in results)
        wall = max(1e-3, ((end_ns if end_ns > start_ns else time.monotonic_ns()) - start_ns) / 1e9)
        return Run(
            results,
            server_cpu=(tree_cpu_seconds(servers) - server0) / wall,
            clients_cpu=(sum(cpu_seconds(pid) for pid in pids) - clients0) / wall,
            other_cpu=other_processes_cpu(processes0, [*servers, *pids], wall),
            probe_delta=(probe() - probe0) if probe else 0.0,
        )

    def start_job(self, index: int, job: Callable[..., Any], *args: Any) -> None:
        """Have client process ``index`` run ``job(conn, *args)`` (a module-level function)."""
        self._conns[index].send(("job", job, args))

    def expect(self, index: int, kind: str, timeout: float) -> Any:
        """The payload of the next message of client process ``index``, of this kind."""
        return self._expect(self._conns[index], kind, timeout)

    def _expect(self, conn: Connection, kind: str, timeout: float) -> Any:
        if not conn.poll(timeout):
            raise TimeoutError(f"client process sent no {kind!r} within {timeout:.0f} s")
        msg = conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"client process failed:\n{msg[1]}")
        if msg[0] != kind:
            raise RuntimeError(f"client process sent {msg[0]!r}, expected {kind!r}")
        return msg[1] if len(msg) > 1 else None

    def close(self) -> None:
        """Ask each process to exit; terminate, then kill, any that do not (by PID)."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):  # already gone
                conn.send(("exit",))
            conn.close()  # a process still waiting for a message sees EOF and exits
        deadline = time.monotonic() + 5.0
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(3.0)
            if proc.is_alive():
                proc.kill()
                proc.join(3.0)
        self._conns.clear()
        self._procs.clear()
