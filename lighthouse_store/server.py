"""The daemon: wires storage, the writer and the gRPC server, and runs them.

Each concern is wired in its own small ``_configure_*`` function (as in the
grpc examples). SIGHUP reloads and SIGUSR1 dumps the stacks, serving on
(``signals.py``). Shutdown on SIGTERM/SIGINT: health flips to NOT_SERVING, streams
(subscriptions, reads) end at their next step with UNAVAILABLE, reason
SHUTTING_DOWN (``calls.py``), new appends are refused with UNAVAILABLE until
callers go quiet (``_drain``); the streams get ``calls.STREAM_END_S`` to end
(a stalled reader's is then cancelled), unary calls in flight get
``shutdown_grace_seconds``; the server stops, the writer commits everything already queued,
the spans still queued are exported (with tracing on, ``tracing.py``),
storage closes, the lock goes.

:func:`serve` is the whole daemon in one process (``--workers 1``): the
data-dir lock, the store (its start-up checks, ``integrity.py``), the
background scrub (``scrub.py``) and the server.
:func:`run` is the server part alone, which a worker process runs with a
:class:`WorkerRole` (``worker.py``, ``supervisor.py``): it binds the port
shared with the other workers, and it hears of their commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lighthouse_store import __version__, admin, signals, tracing, transport
from lighthouse_store.access import Access
from lighthouse_store.calls import STREAM_END_S, Calls
from lighthouse_store.config import Config, Durability
from lighthouse_store.degradation import WriteGate, recorded, system_event
from lighthouse_store.faults import Faults
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.lock import DataDirLock
from lighthouse_store.metrics import DaemonMetrics
from lighthouse_store.ops import LocalOps, ServingOps
from lighthouse_store.ports import BindError
from lighthouse_store.scrub import Scrubber, told
from lighthouse_store.servicer import SERVICE_NAME, EventStoreServicer, method_handlers
from lighthouse_store.subscriptions import SubscriptionHub
from lighthouse_store.threads import name_os_thread
from lighthouse_store.transport import ServerTls
from lighthouse_store.wakeups import Wakeups
from lighthouse_store.writer import GroupCommitWriter

__all__ = ["BindError", "WorkerRole", "open_store", "run", "serve"]

log = logging.getLogger("lighthouse_store.server")

HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RECORD_TIMEOUT_S = 30.0  # a level event not durable by then: the level stays as it was


@dataclass(frozen=True)
class WorkerRole:
    """What makes a server one of several worker processes (``worker.py``)."""

    index: int
    wakeups: Wakeups  # to wake the other workers after a commit, and be woken


def _server_options(config: Config, reuse_port: bool = False) -> list[tuple[str, int]]:
    message_limit = config.limits.max_append_bytes + 4 * 1024 * 1024
    return [
        ("grpc.max_receive_message_length", message_limit),
        ("grpc.max_send_message_length", message_limit),
        # Workers share the port (the kernel spreads connections over them,
        # ports.py). A single process does not: without this, a second daemon
        # could bind the same port on Linux.
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A client may ping at most every 5 s with no call open; the third
        # early ping closes its connection (GOAWAY "too_many_pings").
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # A connection with no call for this long is closed (GOAWAY); clients
        # reconnect when they next call.
        ("grpc.max_connection_idle_ms", 30 * 60 * 1000),
    ]


def _configure_tracing(worker: WorkerRole | None) -> tracing.Tracing | None:
    """OpenTelemetry as the OTEL_* variables say (tracing.py); None: off."""
    return tracing.configure(SERVICE_NAME, worker.index if worker else None)


def _configure_store_service(server: grpc.aio.Server, servicer: EventStoreServicer) -> None:
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _configure_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await _set_health(servicer, serving=True)
    return servicer


async def _set_health(servicer: health.aio.HealthServicer, *, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else _NOT_SERVING
    for name in ("", SERVICE_NAME):
        await servicer.set(name, status)


def _following_health(
    loop: asyncio.AbstractEventLoop, servicer: health.aio.HealthServicer
) -> Callable[[bool], None]:
    """A setter of gRPC health, for the health monitor (``ops.py``, any
    thread): SERVING or NOT_SERVING, for the server and the store service
    alike, as ``/health`` judges the write path. Once the drain has begun
    the servicer keeps NOT_SERVING whatever it is told."""
    pending: set[asyncio.Task[None]] = set()

    def apply(serving: bool) -> None:
        task = loop.create_task(_set_health(servicer, serving=serving))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def set_serving(serving: bool) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
            loop.call_soon_threadsafe(apply, serving)

    return set_serving


async def _sample(hub: SubscriptionHub, metrics: DaemonMetrics, store: LmdbEventStore) -> None:
    """Once a second: the largest subscription lag (a pass over the sessions),
    and whether appends are refused for space (a statvfs: ``space.py``), so
    that the gauge goes back to 0 with no append to try."""
    while True:
        metrics.max_lag.set(hub.max_lag())
        metrics.space_full(store.space_refusal() is not None)
        await asyncio.sleep(1.0)


def _configure_admin(server: grpc.aio.Server, ops: ServingOps, access: Access) -> None:
    admin.add_to_server(server, admin.AdminServicer(ops.admin, access))


def _configure_reflection(server: grpc.aio.Server) -> None:
    names = (SERVICE_NAME, admin.ADMIN_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)


def _recorder(writer: GroupCommitWriter) -> Callable[[str, dict[str, object]], None]:
    """The degradation controller's ``record``: one ``$system`` event through
    the writer's priority slot, durable when it returns (any thread but the
    event loop's)."""

    def record(event_type: str, data: dict[str, object]) -> None:
        future = writer.commit_first(system_event(event_type, data))
        recorded(future.result(RECORD_TIMEOUT_S))

    return record


def _bind(server: grpc.aio.Server, listen: str, tls: ServerTls | None) -> str:
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials)
    except RuntimeError:
        port = 0
    if not port:
        raise BindError(f"cannot listen on {listen} (address in use or not available)")
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


async def _drain(writer: GroupCommitWriter, quiet: float = 0.05, limit: float = 2.0) -> None:
    """Answer late appends with UNAVAILABLE until callers stop sending.

    ``server.stop()`` cancels calls that gRPC had received but not yet handed
    to a handler (clients see CANCELLED, which they do not retry). So first the
    writer refuses new appends with ShuttingDown (UNAVAILABLE, recoverable),
    and the server stops only once nothing has been queued or refused for
    ``quiet`` seconds (at most ``limit``).
    """
    writer.refuse_new()
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        await asyncio.sleep(quiet)
        if writer.quiet_for(quiet):
            return


def open_store(
    config: Config,
    *,
    shared: bool = False,
    preallocate: bool = True,
    gate: WriteGate | None = None,
) -> LmdbEventStore:
    """The store as ``config`` says. ``shared``: other processes commit to it
    too; ``gate``: the degradation level's, when another process decides it."""
    return LmdbEventStore(
        config.data_dir,
        map_size=config.map_size,
        durability=config.durability,
        preallocate=config.preallocate if preallocate else 0,
        tail_bytes=config.tail_bytes,
        shared=shared,
        gate=gate,
        max_map_size=config.max_map_size,
        block_ratio=config.disk_block_ratio,
        resume_ratio=config.disk_resume_ratio,
    )


async def serve(config: Config, reloader: signals.Reloader) -> None:
    """Run the daemon until SIGTERM/SIGINT. Raises DataDirLocked, BindError."""
    lock = DataDirLock(config.data_dir).acquire()
    try:
        store = open_store(config)
        scrubber = Scrubber(store, config.scrub_records_per_second, told).start()
        try:
            ops = LocalOps(config, store).start()  # the HTTP endpoint: BindError
            try:
                ready = _ready_line(ops.endpoint.address)
                await run(config, store, ready=ready, reloader=reloader, ops=ops)
            finally:
                ops.close()
        finally:
            scrubber.close()
            store.close()
    finally:
        lock.release()


def _security_line(config: Config, access: Access) -> str:
    """What protects the port, said once at start."""
    tls = "mTLS" if config.tls_client_ca else "TLS" if config.tls_cert else "no TLS"
    if access.enabled:
        who = "every call authenticated (--tokens-file), default deny"
    else:
        who = "no authentication: every caller may do everything"
    where = "loopback only" if transport.is_loopback(config.listen) else "NOT loopback"
    insecure = config.insecure and not (config.tls_cert and access.enabled)
    return f"security: {tls}; {who}; {where}" + (" (--insecure)" if insecure else "")


def _ready_line(http: str | None) -> Callable[[str], None]:
    def ready(address: str) -> None:
        message = {"event": "ready", "address": address, "pid": os.getpid()}
        if http is not None:
            message["http"] = http
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    return ready


async def run(
    config: Config,
    store: LmdbEventStore,
    *,
    ready: Callable[[str], None],
    reloader: signals.Reloader,
    ops: ServingOps,
    worker: WorkerRole | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; ``ready(address)`` once serving. SIGHUP
    reloads (``reloader``), SIGUSR1 dumps the stacks (``signals.py``)."""
    loop = asyncio.get_running_loop()
    metrics = ops.metrics
    writer = GroupCommitWriter(
        store,
        max_queue=config.max_queue,
        max_queued_bytes=config.max_queued_bytes,
        max_batch_appends=config.max_batch_appends,
        max_batch_bytes=config.max_batch_bytes,
        checkpoint_delay=config.ack_delay_ms / 1000,
        faults=Faults.from_env(),
        announce=worker.wakeups.announce if worker else None,
        on_busy=metrics.writer_busy,
    )
    writer.add_listener(metrics.commit_listener(writer))
    readers = ThreadPoolExecutor(
        config.reader_threads,
        thread_name_prefix="lh-reader",
        initializer=name_os_thread,
    )
    traced = _configure_tracing(worker)
    server = grpc.aio.server(
        interceptors=traced.interceptors if traced else None,
        options=_server_options(config, reuse_port=worker is not None),
    )
    hub = SubscriptionHub(store, writer, readers, config.subscriptions, metrics)
    calls = Calls()
    access = Access.from_file(config.tokens_file)
    tls = transport.server_tls(config.tls_cert, config.tls_key, config.tls_client_ca)
    servicer = EventStoreServicer(
        config, store, writer, readers, hub, metrics, traced.spans if traced else None, calls,
        gate=store.gate, access=access,
    )  # fmt: skip
    _configure_store_service(server, servicer)
    _configure_admin(server, ops, access)
    health_servicer = await _configure_health(server)
    _configure_reflection(server)
    address = _bind(server, config.listen, tls)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        reloader.reload()
        access.reload()
        if tls is not None:
            tls.reload()

    signals.install(loop, reload)
    if worker is not None:

        def other_worker_committed() -> None:
            store.observe_head()
            hub.wake_all()

        worker.wakeups.listen(other_worker_committed)
    writer.start()
    await server.start()
    sampler = loop.create_task(_sample(hub, metrics, store))
    ops.serving(_following_health(loop, health_servicer), _recorder(writer))
    log.info(
        "listening on %s (data dir %s, durability %s, tail %d bytes, version %s)",
        address,
        config.data_dir,
        config.durability.value,
        store.tail_bytes,
        __version__,
    )
    if worker is None or worker.index == 0:
        log.info(_security_line(config, access))
    if config.durability is not Durability.FSYNC and worker is None:  # else the supervisor
        log.warning(
            "durability %s: acknowledged appends are not fsynced, so a power cut "
            "can lose the newest of them (GetInfo reports the mode)",
            config.durability.value,
        )
    ready(address)
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight calls")
        ops.stopping()
        await health_servicer.enter_graceful_shutdown()
        calls.shut_down()
        hub.shut_down()
        await _drain(writer)
        # A stalled reader's stream gets STREAM_END_S, not the grace (calls.py).
        await calls.settled(streams=STREAM_END_S, unary=config.shutdown_grace_seconds)
        await server.stop(0)
    finally:
        sampler.cancel()
        await writer.stop()
        readers.shutdown(wait=True)
        if worker is not None:
            worker.wakeups.close()
        if traced is not None:  # the last spans, once every call has ended
            traced.shutdown()
    log.info("stopped; head position %d", store.head_position())
