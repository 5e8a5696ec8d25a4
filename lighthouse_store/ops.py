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
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import Metric

from lighthouse_store import metrics as m
from lighthouse_store.config import Config, Switch
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

__all__ = ["Endpoint", "LocalOps", "ServingOps", "SupervisorOps", "WorkerOps"]

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
    its metrics, and a way to keep its gRPC health in step with ``/health``."""

    def __init__(self, metrics: m.DaemonMetrics) -> None:
        self.metrics = metrics

    def serving(self, set_grpc_health: VerdictHook) -> None:
        """The process serves; ``set_grpc_health(serving)`` may be called from any thread."""

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
        self.endpoint = Endpoint(config, registry, self._figures)

    def start(self) -> LocalOps:
        self.endpoint.start()
        return self

    def serving(self, set_grpc_health: VerdictHook) -> None:
        self._not_serving = ""
        self.endpoint.monitor.set_verdict_hook(set_grpc_health)

    def stopping(self) -> None:
        self._not_serving = SHUTTING_DOWN

    def close(self) -> None:
        self.endpoint.close()

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
        )


class WorkerOps(ServingOps):
    """A worker: metrics into the multiprocess files; gRPC health as the
    supervisor says (:meth:`verdict`, from the control socket's thread)."""

    def __init__(self, config: Config) -> None:
        super().__init__(m.DaemonMetrics(None, instruments=config.metrics is Switch.ON))
        self._hook: VerdictHook | None = None
        self._verdict: bool | None = None

    def serving(self, set_grpc_health: VerdictHook) -> None:
        self._hook = set_grpc_health
        if self._verdict is not None:
            set_grpc_health(self._verdict)

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
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="lighthouse-metrics-"))
        try:
            registry = _registry(store)
            registry.register(m.AggregateCollector(self.directory))
            registry.register(m.WorkerProcessCollector(workers))
            self._store = store
            self._durability = store.durability.value
            self._workers = workers
            self._expected = config.workers
            self._not_serving = STARTING
            self._buckets: Buckets = ()
            self._buckets_read = -math.inf
            self.endpoint = Endpoint(config, registry, self._figures, tell_workers)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def worker_environment(self) -> dict[str, str]:
        return {m.MULTIPROC_ENV: str(self.directory)}

    def start(self) -> None:
        self.endpoint.start()

    def serving(self) -> None:
        self._not_serving = ""

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
