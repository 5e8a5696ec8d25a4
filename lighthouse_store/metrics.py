"""Prometheus metrics: every metric the daemon exports, declared here and nowhere else.

Names and labels
================

Prometheus conventions: a ``lighthouse_`` prefix, base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters, explicit histogram
buckets around the SLO edges (:data:`TIME_BUCKETS`: 0.5 ms to 1 s). The
README's metrics table lists them all. Every label has a small, fixed set of
values: ``method`` (the five RPCs), ``code`` (gRPC status names),
``failure_class`` (three, or ``none``), ``reason`` (the ErrorInfo reasons),
``worker`` (0..N-1), ``version`` and ``durability``. Never a stream name, an
event id, a consumer name or an event type: each distinct label value is a
time series kept in memory by this process and by Prometheus, and those sets
grow without bound (one series per stream would be millions).

Who records, who serves
=======================

:class:`DaemonMetrics` is what one serving process records: the RPC
instruments (``servicer.py``'s guard), the writer's (a commit listener, plus
``on_busy``), the subscriptions' (``subscriptions.py``). With ``--workers 1``
they sit in the process's own registry and the same process serves
``/metrics`` (``ops.py``). With workers, each worker records into
prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a
private directory the supervisor makes and removes), and the supervisor
serves their aggregate (:class:`AggregateCollector`); each gauge says how
the workers' values combine (its ``multiprocess_mode``: ``livesum`` for
counts of things in flight, ``livemax`` for flags and worst cases, ``max``
for timestamps; the ``live`` ones forget a worker once it exits).

Figures that cost a system call or a read transaction (storage sizes, the
head, the workers' memory) are computed when scraped, by collectors in the
serving process (:class:`StorageCollector`, :class:`WorkerProcessCollector`),
never on the request path.

Cost
====

An RPC costs one counter increment and one histogram observation on label
children bound once (:class:`RpcInstruments`); a group commit a handful of
updates; a delivery to a subscriber one observation. ``--metrics off`` drops
all of those (``perf/bench.py --compare-metrics`` and ``perf/metrics_cost.py``
measure the difference; ``perf/RESULTS.md`` has the numbers); the few gauges
the health check reads (queue depth, newest commit, writes blocked,
subscriptions) stay, written only when their value changes.

The multiprocess files keep a file set per worker pid: a worker that is
restarted leaves its counters' files behind (they stay in the sums), so a
worker that keeps crashing makes scrapes slowly longer until the daemon
restarts; the supervisor's directory is removed when it exits.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from lighthouse_store import __version__, lmdb_format, space

if TYPE_CHECKING:
    from lighthouse_store.corruption import Finding
    from lighthouse_store.lmdb_store import LmdbEventStore
    from lighthouse_store.writer import CommitInfo, CommitListener, GroupCommitWriter

__all__ = [
    "METHODS",
    "MULTIPROC_ENV",
    "AggregateCollector",
    "BuildInfoCollector",
    "DaemonMetrics",
    "RpcInstruments",
    "StorageCollector",
    "WorkerProcessCollector",
    "process_usage",
    "storage_figures",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: around the SLO edges (append p99 100 ms, GetEvent p99 1 ms).
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
COMMIT_EVENT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LAG_BUCKETS = (0, 1, 10, 100, 1_000, 10_000, 100_000)

METHODS = ("Append", "Read", "GetEvent", "GetInfo", "Subscribe")
UNTIMED = frozenset({"Subscribe"})  # long-lived: its length says nothing of the server
NO_FAILURE_CLASS = "none"

# Gauges the health check reads per process (ops.py); named here so that
# health and exposition agree. BUSY_SINCE is not exported: a time per worker
# that only says something next to that worker's queue depth.
QUEUE_DEPTH = "lighthouse_writer_queue_depth"
QUEUE_BYTES = "lighthouse_writer_queue_bytes"
LAST_COMMIT = "lighthouse_last_commit_timestamp_seconds"
WRITES_BLOCKED = "lighthouse_writes_blocked"
SUBSCRIPTIONS = "lighthouse_subscriptions_active"
MAX_LAG = "lighthouse_subscription_max_lag_events"
BUSY_SINCE = "lighthouse_writer_busy_since_timestamp_seconds"
COMMIT_DURATION = "lighthouse_commit_duration_seconds"
RPC_DURATION = "lighthouse_rpc_duration_seconds"
RPC_REQUESTS = "lighthouse_rpc_requests"
APPEND_REFUSALS = "lighthouse_append_refusals"
DEGRADATION_LEVEL = "lighthouse_degradation_level"
CORRUPTION_DETECTED = "lighthouse_corruption_detected"
LAST_COMMIT_RESOLUTION_S = 0.01
HIDDEN = frozenset({BUSY_SINCE})

# Counters and histograms export no ``_created`` series: the multiprocess
# aggregate cannot have them, and one process should look like many.
disable_created_metrics()

if os.environ.get(MULTIPROC_ENV):
    # A worker: values go to the multiprocess files, named by this pid. The
    # library asks the kernel for the pid at every update, to notice a fork;
    # workers never fork, and reading it once makes an update about twice as
    # fast (prometheus-client documents this hook for its process identifier).
    _PID = os.getpid()
    values.ValueClass = values.MultiProcessValue(lambda: _PID)


class FindingsSeen:
    """The corruption findings (kind, position) counted so far, to count each once."""

    LIMIT = 4096  # past this many, nothing more is counted (the store is beyond saving)

    def __init__(self) -> None:
        self._seen: set[tuple[str, int | None]] = set()
        self._lock = threading.Lock()

    def first(self, finding: Finding) -> bool:
        key = (finding.what, finding.position)
        with self._lock:
            if key in self._seen or len(self._seen) >= self.LIMIT:
                return False
            self._seen.add(key)
            return True


class RpcInstruments:
    """One method's request counter and duration histogram, bound once."""

    __slots__ = ("duration", "requests")

    def __init__(self, requests: Counter, duration: Histogram | None) -> None:
        self.requests = requests
        self.duration = duration


class DaemonMetrics:
    """Every metric one serving process records. ``registry``: where they
    are collected from in this process (None with workers: the multiprocess
    files carry them to the supervisor). ``instruments`` False is
    ``--metrics off``: only the gauges the health check reads."""

    def __init__(self, registry: CollectorRegistry | None, *, instruments: bool = True) -> None:
        self.instruments = instruments
        r = registry
        self.queue_depth = Gauge(QUEUE_DEPTH, "Appends waiting for the writer or being committed",
                                 multiprocess_mode="livesum", registry=r)  # fmt: skip
        self.queue_bytes = Gauge(QUEUE_BYTES, "Bytes of the events of the appends queued",
                                 multiprocess_mode="livesum", registry=r)  # fmt: skip
        self.last_commit = Gauge(LAST_COMMIT, "Unix time of the newest commit of appends",
                                 multiprocess_mode="max", registry=r)  # fmt: skip
        self.writes_blocked = Gauge(
            WRITES_BLOCKED,
            "1 while appends are refused because storage cannot take them: the data volume or"
            " the LMDB map past --disk-block-ratio (until below --disk-resume-ratio), or a"
            " commit refused (a full disk or map, a write failure) until one of events succeeds,"
            " and while the degradation level is degraded",
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.subscriptions = Gauge(SUBSCRIPTIONS, "Subscriptions open",
                                   multiprocess_mode="livesum", registry=r)  # fmt: skip
        self.max_lag = Gauge(
            MAX_LAG, "Largest distance in positions from the head to what a subscription was sent",
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        self.busy_since = Gauge(
            BUSY_SINCE,
            "Unix time since which the appends queued have waited with no commit finishing",
            multiprocess_mode="liveall", registry=None,
        )  # fmt: skip
        self.degradation_level = Gauge(
            DEGRADATION_LEVEL, "The degradation level: 0 normal, 1 warning, 2 degraded (read-only)",
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip
        # What the gauges hold, so that they are written only when it changes:
        self._depth = self._queued = self._blocked = self._refused = self._level_blocked = 0
        self._space_full = False
        self._last_commit = 0.0
        self._health_gauges = (self.queue_depth, self.queue_bytes, self.last_commit,
                               self.writes_blocked, self.subscriptions, self.max_lag,
                               self.busy_since)  # fmt: skip
        self.rpc: dict[str, RpcInstruments | None] = dict.fromkeys(METHODS)
        self.counted = FindingsSeen()
        if not instruments:
            return
        requests = Counter(RPC_REQUESTS, "RPCs received", ["method"], registry=r)
        self._requests = requests
        duration = Histogram(
            RPC_DURATION, "Time to answer an RPC (a Read: its whole stream)",
            ["method"], buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self._duration = duration
        for m in METHODS:
            self.rpc[m] = RpcInstruments(
                requests.labels(m), None if m in UNTIMED else duration.labels(m)
            )
        self._errors = Counter(
            "lighthouse_rpc_errors", "RPCs answered with an error, by gRPC code and failure class",
            ["method", "code", "failure_class"], registry=r,
        )  # fmt: skip
        self._refusals = Counter(
            APPEND_REFUSALS, "Appends refused, by ErrorInfo reason", ["reason"],
            registry=r,
        )  # fmt: skip
        self._corruption = Counter(
            CORRUPTION_DETECTED,
            "Corruption found: stored records (kind and position) that failed a check when"
            " read, each counted once per process, by a client's read, the start-up check"
            " or the scrub", registry=r,
        )  # fmt: skip
        self._events = Counter("lighthouse_events_appended", "Events written", registry=r)
        self._bytes = Counter(
            "lighthouse_appended_bytes", "Bytes of the events written", registry=r
        )
        self._commit_events = Histogram(
            "lighthouse_commit_events", "Events written per group commit",
            buckets=COMMIT_EVENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.commit_duration = Histogram(
            COMMIT_DURATION, "Time of a group commit: transaction, write and flush",
            buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self._fsync = Histogram(
            "lighthouse_fsync_duration_seconds",
            "Of a group commit, the time writing it to disk and flushing it",
            buckets=TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self._lag = Histogram(
            "lighthouse_subscription_lag_events",
            "Positions between the head and the newest event of each delivery",
            buckets=LAG_BUCKETS, registry=r,
        )  # fmt: skip
        self._fell_behind = Counter(
            "lighthouse_subscription_fell_behind",
            "Live subscriptions that fell behind and went back to reading from storage",
            registry=r,
        )  # fmt: skip
        self._resumes = Counter(
            "lighthouse_subscription_resumes",
            "Subscriptions started from a named consumer's stored position or a given position",
            registry=r,
        )  # fmt: skip

    # -- RPCs (servicer.py) ------------------------------------------------------

    def rpc_error(self, method: str, code: str, failure_class: str, reason: str) -> None:
        if not self.instruments:
            return
        self._errors.labels(method, code, failure_class).inc()
        if method == "Append":
            self._refusals.labels(reason).inc()

    def corruption_found(self, finding: Finding) -> None:
        """A ``corruption.add_hook`` hook: every finding (a client's read,
        the start-up check, the scrub) of a record (kind and position) this
        process had not counted yet: the scrub goes round again, readers
        come back."""
        if self.instruments and self.counted.first(finding):
            self._corruption.inc()

    def set_level(self, level: int) -> None:
        """The degradation level (0, 1, 2); 2 blocks writes."""
        self.degradation_level.set(level)
        self._level_blocked = 1 if level >= 2 else 0
        self._set_blocked()

    # -- the writer (writer.py) ---------------------------------------------------

    def writer_busy(self) -> None:
        """An append arrived at an empty queue (``GroupCommitWriter(on_busy=...)``)."""
        self.busy_since.set(time.time())
        self._set_depth(1)

    def _set_depth(self, depth: int) -> None:
        if depth != self._depth:
            self.queue_depth.set(depth)
            self._depth = depth

    def commit_listener(self, writer: GroupCommitWriter) -> CommitListener:
        # A gauge is written only when it changes (a write to the
        # multiprocess files costs about a microsecond); the newest commit's
        # time to LAST_COMMIT_RESOLUTION_S.
        def committed(info: CommitInfo) -> None:
            pending, queued = writer.pending, writer.pending_bytes
            self._set_depth(pending)
            if queued != self._queued:
                self.queue_bytes.set(queued)
                self._queued = queued
            now = time.time()
            if pending:  # those left wait for the next commit from now on
                self.busy_since.set(now)
            self._refused = 1 if info.refused_by_storage else 0 if info.events else self._refused
            self._set_blocked()
            committed = info.appends > info.refused_by_storage  # its transaction committed
            if committed and now - self._last_commit >= LAST_COMMIT_RESOLUTION_S:
                self.last_commit.set(now)
                self._last_commit = now
            if not self.instruments:
                return
            self.commit_duration.observe(info.seconds)
            self._fsync.observe(info.flush_seconds)
            if info.appends:
                self._commit_events.observe(info.events)
            if info.events:
                self._events.inc(info.events)
                self._bytes.inc(info.bytes)

        return committed

    def space_full(self, full: bool) -> None:
        """Whether appends are refused for disk or map pressure now (``space.py``;
        asked every second, so the gauge recovers with no append to try)."""
        self._space_full = full
        self._set_blocked()

    def _set_blocked(self) -> None:
        blocked = 1 if self._refused or self._space_full or self._level_blocked else 0
        if blocked != self._blocked:
            self.writes_blocked.set(blocked)
            self._blocked = blocked

    # -- subscriptions (subscriptions.py) -------------------------------------------

    def subscription_started(self, resumed: bool) -> None:
        self.subscriptions.inc()
        if resumed and self.instruments:
            self._resumes.inc()

    def subscription_ended(self) -> None:
        self.subscriptions.dec()

    def delivered(self, lag: int) -> None:
        if self.instruments:
            self._lag.observe(lag)

    def fell_behind(self) -> None:
        if self.instruments:
            self._fell_behind.inc()

    # -- what the health check reads ------------------------------------------------

    def health_families(self) -> Iterator[Metric]:
        """This process's gauges and commit durations, as collected (ops.py)."""
        for gauge in self._health_gauges:
            yield from gauge.collect()
        if self.instruments:
            yield from self.commit_duration.collect()

    def append_families(self) -> Iterator[Metric]:
        """The RPC requests, durations and append refusals (the degradation
        triggers' figures; none with ``--metrics off``)."""
        if self.instruments:
            yield from self._requests.collect()
            yield from self._duration.collect()
            yield from self._refusals.collect()


# -- collectors of the serving process -------------------------------------------------


class AggregateCollector(Collector):
    """The workers' metrics from the multiprocess files in ``path``, combined
    (counters and histograms summed, gauges by their mode), less the
    per-worker figures that only the health check reads."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        return [m for m in _merge(self._path, "*.db") if m.name not in HIDDEN]


def _merge(path: Path, pattern: str) -> list[Metric]:
    return list(MultiProcessCollector.merge(glob.glob(str(path / pattern))))


def process_gauges(path: Path, pid: int) -> list[Metric]:
    """One worker's own gauges, from its multiprocess files."""
    return _merge(path, f"gauge_*_{pid}.db")


def histogram_families(path: Path) -> list[Metric]:
    """Every worker's histograms, summed, from the multiprocess files."""
    return _merge(path, "histogram_*.db")


def counter_families(path: Path) -> list[Metric]:
    """Every worker's counters, summed, from the multiprocess files."""
    return _merge(path, "counter_*.db")


def forget_process(path: Path, pid: int) -> None:
    """Drop an exited worker's ``live*`` gauges; its counters stay in the sums."""
    mark_process_dead(pid, str(path))


def storage_figures(store: LmdbEventStore) -> dict[str, float]:
    """The data file's size, the map's and the volume's use, the head: a
    stat, a statvfs and one read transaction. The map's use is of what it can
    grow to (``--max-map-size``: ``LmdbEventStore.map_ratio``)."""
    data = lmdb_format.env_path(store.data_dir) / "data.mdb"
    try:
        size = data.stat().st_size
    except OSError:
        size = 0
    try:
        free = space.free_ratio(os.statvfs(data.parent))
    except OSError:
        free = 0.0
    return {
        "data_bytes": float(size),
        "map_used_ratio": store.map_ratio(),
        "disk_free_ratio": free,
        "head_position": float(store.last_position()),
    }


class StorageCollector(Collector):
    """The storage gauges, computed when scraped."""

    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "data_bytes": ("lighthouse_storage_data_bytes", "Size of data.mdb on disk"),
        "map_used_ratio": (
            "lighthouse_storage_map_used_ratio",
            "Used part of what the LMDB map can grow to (--max-map-size), 0..1",
        ),
        "disk_free_ratio": (
            "lighthouse_storage_disk_free_ratio",
            "Free part of the data directory's volume for unprivileged users, 0..1 (1 - df's Use%)",
        ),
        "head_position": ("lighthouse_head_position", "Position of the newest committed event"),
    }

    def __init__(self, store: LmdbEventStore) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        for key, value in storage_figures(self._store).items():
            name, text = self._HELP[key]
            yield GaugeMetricFamily(name, text, value=value)


class BuildInfoCollector(Collector):
    """``lighthouse_build_info{version, durability} 1``."""

    def __init__(self, durability: str) -> None:
        self._durability = durability

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "lighthouse_build_info", "The daemon's version and durability mode; always 1",
            labels=["version", "durability"],
        )  # fmt: skip
        info.add_metric([__version__, self._durability], 1)
        yield info


def process_usage(pid: int | str = "self") -> tuple[int, int, int]:
    """Resident memory (bytes), open descriptors and the descriptor limit of
    a process, from ``/proc`` (zeros where it cannot be read)."""
    base = Path("/proc") / str(pid)
    try:
        rss = int((base / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir(base / "fd"))
        limit = 0
        for line in (base / "limits").read_text().splitlines():
            if line.startswith("Max open files"):
                limit = int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return 0, 0, 0
    return rss, fds, limit


class WorkerProcessCollector(Collector):
    """``lighthouse_worker_resident_memory_bytes{worker}`` and
    ``lighthouse_worker_open_fds{worker}`` of the live workers."""

    def __init__(self, workers: Callable[[], list[tuple[int, int]]]) -> None:
        self._workers = workers  # (index, pid) of each live worker

    def collect(self) -> Iterable[Metric]:
        rss = GaugeMetricFamily(
            "lighthouse_worker_resident_memory_bytes", "Resident memory of a worker process",
            labels=["worker"],
        )  # fmt: skip
        fds = GaugeMetricFamily(
            "lighthouse_worker_open_fds", "Open file descriptors of a worker process",
            labels=["worker"],
        )  # fmt: skip
        for index, pid in self._workers():
            used, files, _ = process_usage(pid)
            rss.add_metric([str(index)], used)
            fds.add_metric([str(index)], files)
        yield rss
        yield fds
