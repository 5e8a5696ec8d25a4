"""Operations wiring: metrics, health figures and the HTTP endpoint, per process role.

- :class:`LocalOps` (``--workers 1``): the one process records its metrics
  in its own registry, reads its health figures from them, and serves
  ``--http-listen`` itself.
- :class:`WorkerOps`: a worker records into the multiprocess files and
  serves no HTTP; its gRPC health follows what the supervisor tells it over
  the control socket (``worker.py``).
- :class:`SupervisorOps`: the supervisor makes the private multiprocess
  directory (removed when it exits), serves the workers' aggregate on
  ``/metrics``, judges health from each live worker's own files (so one
  stuck worker shows, rather than vanishing in a sum), and tells every
  worker the verdict, so each one's gRPC health agrees with ``/health``.

Each process that decides also runs the degradation controller
(``degradation.py``): :class:`LocalOps` with one process, :class:`SupervisorOps`
with workers, from the same figures (the Append RPC histogram and refusals,
the storage figures, resident memory). Its level sets the store's
:class:`~lighthouse_store.degradation.WriteGate`, the
``lighthouse_degradation_level`` gauge, and the health ``writer`` check;
with workers the supervisor sends it to every worker (:meth:`WorkerOps.level`).
Every corruption finding (``corruption.add_hook``) is counted in
``lighthouse_corruption_detected_total`` by the process that found it (the
supervisor's own, the scrub's, are added to the workers' aggregate) and
moves the level to ``degraded``.

Either way the storage figures come from the serving process's store when
asked (``metrics.storage_figures``), the health monitor runs even with
``--http-listen off`` (gRPC health still follows it), and gRPC health flips
within the monitor's period (0.5 s) of ``/health``, or at once when
``/health`` is asked.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from lighthouse_store import corruption
from lighthouse_store import metrics as m
from lighthouse_store.config import Config, Switch
from lighthouse_store.corruption import Finding
from lighthouse_store.degradation import (
    NOT_THE_SERVERS,
    RANK,
    Controller,
    Record,
    Sample,
    Window,
    WriteGate,
    memory_limit,
)
from lighthouse_store.health import (
    SHUTTING_DOWN,
    STARTING,
    Figures,
    HealthMonitor,
    StorageFigures,
    Thresholds,
    UsageFigures,
    WriterFigures,
)
from lighthouse_store.http_ops import OpsServer
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.settings import OFF

__all__ = ["Admin", "Endpoint", "LocalOps", "ServingOps", "SupervisorOps", "WorkerOps"]

Buckets = tuple[tuple[float, float], ...]
VerdictHook = Callable[[bool], None]


def _thresholds(config: Config) -> Thresholds:
    return Thresholds(
        stall_seconds=config.writer_stall_seconds,
        lag_warn_events=config.subscriptions.fell_behind_events,
    )


def _read(families: Iterable[Metric]) -> tuple[dict[str, float], Buckets]:
    """Gauge values by sample name, and the commit-duration buckets (le, cumulative)."""
    gauges: dict[str, float] = {}
    buckets: list[tuple[float, float]] = []
    for family in families:
        for s in family.samples:
            if s.name == m.COMMIT_DURATION + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif family.type == "gauge":
                gauges[s.name] = s.value
    return gauges, tuple(sorted(buckets))


def _append_sample(families: Iterable[Metric]) -> Sample:
    """The Append figures the degradation triggers read (cumulative)."""
    buckets: list[tuple[float, float]] = []
    requests = errors = 0.0
    for family in families:
        for s in family.samples:
            if s.name == m.RPC_DURATION + "_bucket" and s.labels.get("method") == "Append":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == m.RPC_REQUESTS + "_total" and s.labels.get("method") == "Append":
                requests += s.value
            elif (
                s.name == m.APPEND_REFUSALS + "_total"
                and s.labels.get("reason") not in NOT_THE_SERVERS
            ):
                errors += s.value
    return Sample(tuple(sorted(buckets)), requests, errors)


class _Triggers:
    """The degradation triggers' figures now (``degradation.Controller``)."""

    def __init__(
        self,
        config: Config,
        store: LmdbEventStore,
        families: Callable[[], Iterable[Metric]],
        rss: Callable[[], int],
    ) -> None:
        self._window = Window(config.degradation.window_seconds)
        self._limit = memory_limit(config.memory_limit)
        self._store = store
        self._families = families
        self._rss = rss

    def __call__(self) -> dict[str, float | None]:
        p99, errors = self._window.add(time.monotonic(), _append_sample(self._families()))
        s = m.storage_figures(self._store)
        return {
            "append_p99_seconds": p99,
            "append_error_ratio": errors,
            "disk_used_ratio": 1 - s["disk_free_ratio"],
            "map_used_ratio": s["map_used_ratio"],
            "memory_used_ratio": self._rss() / self._limit if self._limit else None,
        }


def _own_rss() -> int:
    return _usage().rss_bytes


class Admin(Protocol):
    """What ``AdminService`` calls (``admin.py``): blocking, from a thread."""

    def degrade(self, level: str, reason: str) -> dict[str, Any]: ...

    def recover(self, reason: str) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...


def _writer(gauges: dict[str, float], worker: int | None) -> WriterFigures:
    return WriterFigures(
        worker=worker,
        queue_depth=int(gauges.get(m.QUEUE_DEPTH, 0)),
        queue_bytes=int(gauges.get(m.QUEUE_BYTES, 0)),
        last_commit=gauges.get(m.LAST_COMMIT, 0.0),
        busy_since=gauges.get(m.BUSY_SINCE, 0.0),
        writes_blocked=gauges.get(m.WRITES_BLOCKED, 0.0) > 0,
        subscriptions=int(gauges.get(m.SUBSCRIPTIONS, 0)),
        max_lag=int(gauges.get(m.MAX_LAG, 0)),
    )


def _storage(store: LmdbEventStore) -> StorageFigures:
    s = m.storage_figures(store)
    return StorageFigures(
        int(s["data_bytes"]), s["map_used_ratio"], s["disk_free_ratio"], int(s["head_position"])
    )


def _usage(pid: int | str = "self", worker: int | None = None) -> UsageFigures:
    rss, fds, limit = m.process_usage(pid)
    return UsageFigures(rss, fds, limit, worker, None if pid == "self" else int(pid))


def _registry(store: LmdbEventStore) -> CollectorRegistry:
    """A registry with what the serving process computes when scraped."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(m.StorageCollector(store))
    registry.register(m.BuildInfoCollector(store.durability.value))
    return registry


class Endpoint:
    """The health monitor, and the HTTP endpoint unless ``--http-listen off``
    (bound here: BindError), of the process that serves them."""

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        figures: Callable[[], Figures],
        on_verdict: VerdictHook | None = None,
    ) -> None:
        self.registry = registry
        self.monitor = HealthMonitor(figures, _thresholds(config), on_verdict)
        listen = config.http_listen
        self.http = None if listen == OFF else OpsServer(listen, registry, self.monitor)

    @property
    def address(self) -> str | None:
        return None if self.http is None else self.http.address

    def start(self) -> None:
        if self.http is not None:
            self.http.start()
        self.monitor.start()

    def close(self) -> None:
        self.monitor.close()
        if self.http is not None:
            self.http.close()


class ServingOps:
    """What a process serving gRPC (``server.run``) gets from operations:
    its metrics, its store's write gate, the admin calls, and a way to keep
    its gRPC health in step with ``/health``."""

    admin: Admin

    def __init__(self, metrics: m.DaemonMetrics) -> None:
        self.metrics = metrics
        corruption.add_hook(metrics.corruption_found)

    def serving(self, set_grpc_health: VerdictHook, record: Record) -> None:
        """The process serves; ``set_grpc_health(serving)`` may be called
        from any thread; ``record`` writes a ``$system`` event durably, ahead
        of queued appends (the degradation controller's)."""

    def close(self) -> None:
        corruption.remove_hook(self.metrics.corruption_found)

    def stopping(self) -> None:
        """The process drains: it stops serving."""


class LocalOps(ServingOps):
    """``--workers 1``: this process records, judges and serves HTTP."""

    def __init__(self, config: Config, store: LmdbEventStore) -> None:
        registry = _registry(store)
        super().__init__(m.DaemonMetrics(registry, instruments=config.metrics is Switch.ON))
        self._store = store
        self._durability = store.durability.value
        self._not_serving = STARTING
        triggers = _Triggers(config, store, self.metrics.append_families, _own_rss)
        self.controller = self.admin = Controller(
            config.degradation, triggers, self._apply, corrupt=store.degraded
        )
        corruption.add_hook(self.controller.corruption_found)
        if store.degraded is not None:  # found at start, before the hook
            self.metrics.corruption_found(store.degraded)
        self.endpoint = Endpoint(config, registry, self._figures)

    def start(self) -> LocalOps:
        self.endpoint.start()
        return self

    def serving(self, set_grpc_health: VerdictHook, record: Record) -> None:
        self._not_serving = ""
        self.endpoint.monitor.set_verdict_hook(set_grpc_health)
        self.controller.start(record)

    def stopping(self) -> None:
        self._not_serving = SHUTTING_DOWN
        # Its events go through the writer, which stops soon: no level change from now on.
        self.controller.close()

    def close(self) -> None:
        corruption.remove_hook(self.controller.corruption_found)
        self.controller.close()
        self.endpoint.close()
        super().close()

    def _apply(self, level: str, trigger: str, position: int | None) -> None:
        self._store.gate.set(level, trigger, position)
        self.metrics.set_level(RANK[level])

    def _figures(self) -> Figures:
        gauges, buckets = _read(self.metrics.health_families())
        return Figures(
            at=time.time(),
            not_serving=self._not_serving,
            writers=(_writer(gauges, None),),
            storage=_storage(self._store),
            process=_usage(),
            durability=self._durability,
            commit_buckets=buckets,
            degradation=self._store.gate.level,
            degradation_trigger=self.controller.trigger,
        )


class WorkerOps(ServingOps):
    """A worker: metrics into the multiprocess files; gRPC health as the
    supervisor says (:meth:`verdict`, from the control socket's thread)."""

    def __init__(self, config: Config, admin: Admin) -> None:
        super().__init__(m.DaemonMetrics(None, instruments=config.metrics is Switch.ON))
        self.admin = admin
        self.gate = WriteGate()  # the store's (worker.py): set as the supervisor says
        self._hook: VerdictHook | None = None
        self._verdict: bool | None = None

    def serving(self, set_grpc_health: VerdictHook, record: Record) -> None:
        self._hook = set_grpc_health
        if self._verdict is not None:
            set_grpc_health(self._verdict)

    def level(self, level: str, trigger: str, position: int | None) -> None:
        """The supervisor's degradation level (the control socket's thread)."""
        self.gate.set(level, trigger, position)
        self.metrics.set_level(RANK[level])

    def verdict(self, serving: bool) -> None:
        self._verdict = serving
        if self._hook is not None:
            self._hook(serving)


class SupervisorOps:
    """The supervisor's side: the multiprocess directory, the aggregate, the
    health of the workers. ``workers()``: (index, pid) of each worker that
    serves now; ``tell_workers(serving)``: pass the verdict on (any thread)."""

    def __init__(
        self,
        config: Config,
        store: LmdbEventStore,
        workers: Callable[[], list[tuple[int, int]]],
        tell_workers: VerdictHook,
        tell_level: Callable[[str, str, int | None], None],
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="lighthouse-metrics-"))
        try:
            registry = _registry(store)
            self._found = 0  # corruption findings in this process (the scrub's)
            self._found_lock = threading.Lock()
            self._seen = m.FindingsSeen()
            registry.register(_WithOwnFindings(self.directory, self._findings))
            registry.register(m.WorkerProcessCollector(workers))
            self._store = store
            self._durability = store.durability.value
            self._workers = workers
            self._expected = config.workers
            self._not_serving = STARTING
            self._buckets: Buckets = ()
            self._buckets_read = -math.inf
            self._tell_level = tell_level
            self._level: tuple[str, str, int | None] = ("normal", "", None)
            triggers = _Triggers(config, store, self._append_families, self._largest_rss)
            self.controller = Controller(
                config.degradation, triggers, self._apply, corrupt=store.degraded
            )
            corruption.add_hook(self._corruption_found)
            if store.degraded is not None:  # found at start, before the hook
                self._corruption_found(store.degraded)
            self.endpoint = Endpoint(config, registry, self._figures, tell_workers)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def worker_environment(self) -> dict[str, str]:
        return {m.MULTIPROC_ENV: str(self.directory)}

    def start(self, record: Record) -> None:
        self.endpoint.start()
        self.controller.start(record)

    def serving(self) -> None:
        self._not_serving = ""

    def level(self) -> tuple[str, str, int | None]:
        """The level, its trigger and position: what a worker that starts serving is told."""
        return self._level

    def _apply(self, level: str, trigger: str, position: int | None) -> None:
        self._level = (level, trigger, position)
        self._store.gate.set(level, trigger, position)
        self._tell_level(level, trigger, position)

    def _corruption_found(self, finding: Finding) -> None:
        if self._seen.first(finding):
            with self._found_lock:
                self._found += 1
        self.controller.corruption_found(finding)

    def _findings(self) -> int:
        with self._found_lock:
            return self._found

    def _append_families(self) -> Iterator[Metric]:
        yield from m.counter_families(self.directory)
        yield from m.histogram_families(self.directory)

    def _largest_rss(self) -> int:
        return max((_usage(pid).rss_bytes for _, pid in self._workers()), default=0)

    def stopping(self) -> None:
        self._not_serving = SHUTTING_DOWN

    def verdict(self) -> bool:
        """The latest verdict (``health.Report.writes_ok``): what a worker
        that starts serving is told."""
        return self.endpoint.monitor.serving

    def worker_exited(self, pid: int) -> None:
        """Forget the exited worker's live gauges (its counters stay in the sums)."""
        m.forget_process(self.directory, pid)

    def close(self) -> None:
        corruption.remove_hook(self._corruption_found)
        self.controller.close()
        self.endpoint.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _figures(self) -> Figures:
        live = self._workers()
        writers = tuple(
            _writer(_read(m.process_gauges(self.directory, pid))[0], index) for index, pid in live
        )
        up = {index for index, _ in live}
        return Figures(
            at=time.time(),
            not_serving=self._not_serving or ("" if live else "no worker is serving"),
            writers=writers,
            storage=_storage(self._store),
            process=_usage(),
            durability=self._durability,
            workers_down=tuple(i for i in range(self._expected) if i not in up),
            worker_usage=tuple(_usage(pid, index) for index, pid in live),
            commit_buckets=self._commit_buckets(),
            degradation=self._store.gate.level,
            degradation_trigger=self.controller.trigger,
        )

    def _commit_buckets(self) -> Buckets:
        """The workers' commit durations, read at most once a second: every
        histogram of every worker is in those files, and the p99 they feed is
        over a minute anyway."""
        now = time.monotonic()
        if now - self._buckets_read >= 1.0:
            self._buckets = _read(m.histogram_families(self.directory))[1]
            self._buckets_read = now
        return self._buckets


class _WithOwnFindings(m.AggregateCollector):
    """The workers' aggregate, with the supervisor's own corruption findings
    (the scrub's) added to ``lighthouse_corruption_detected_total``."""

    def __init__(self, path: Path, findings: Callable[[], int]) -> None:
        super().__init__(path)
        self._own = findings

    def collect(self) -> Iterable[Metric]:
        own = self._own()
        families = list(super().collect())
        for family in families:
            if family.name == m.CORRUPTION_DETECTED:
                family.samples = [
                    s._replace(value=s.value + own) if s.name.endswith("_total") else s
                    for s in family.samples
                ]
                return families
        if own:
            extra = CounterMetricFamily(m.CORRUPTION_DETECTED, "Corruption found", value=own)
            families.append(extra)
        return families
