"""Server-side tracing (OpenTelemetry): one server span per store RPC.

Configuration
=============

Only the standard ``OTEL_*`` environment variables, read by the OpenTelemetry
SDK and its exporters; the daemon has no tracing flags of its own. Tracing is
on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``, or
any installed ``opentelemetry_traces_exporter`` entry point; a comma-separated
list sends to each); unset, empty or ``none`` it is off, and so with
``OTEL_SDK_DISABLED=true``. Unlike the SDK's auto-configuration, unset means
off: a store does not start sending spans to ``localhost:4317`` unasked.
``otlp`` is OTLP over gRPC (the package installed with the daemon); with
``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` other than ``grpc`` the daemon needs
that exporter's package. ``console`` writes to stderr, not stdout (stdout
carries the ready line). The rest is the SDK's: ``OTEL_EXPORTER_OTLP_ENDPOINT``
and the other ``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER`` (default
``parentbased_always_on``: a call whose ``traceparent`` says "not sampled" is
not recorded), ``OTEL_BSP_*`` (the batch span processor), ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` (they override the resource below),
``OTEL_PROPAGATORS`` (default W3C ``traceparent`` and baggage). A name that no
installed exporter has stops the daemon at start with exit status 2.

What runs where
===============

When tracing is off, nothing of OpenTelemetry is imported or installed: no
interceptor, and the servicer's only sign of tracing per call is a test of
``spans is None``. When it is on, :func:`configure` (called by ``server.run``,
so in each worker process after it started, never in the supervisor and never
before a fork: workers are fresh interpreters) builds the process's own
``TracerProvider`` with a batch span processor, and the gRPC server gets
opentelemetry-instrumentation-grpc's aio server interceptor. The interceptor
takes the caller's W3C trace context from the gRPC metadata, opens a SERVER
span per call named after the method (``/lighthouse.store.v1.EventStoreService/
Append``) with the RPC semantic-convention attributes (``rpc.system``,
``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code``, the peer), makes
it current while the handler runs, and sets the span's status when the
handler aborts. It wraps the handler functions and keeps their
(de)serializers, so the servicer's raw-bytes handlers and the stream-stream
Subscribe are traced like any others. Only the store service is traced:
health checks (polled every few seconds by orchestrators) and reflection
would bury the store's spans. The resource: ``service.name``
``lighthouse-store``, ``service.version``, ``process.pid`` and, in a worker,
``lighthouse.worker.index``. At shutdown, once the server has stopped and
the writer has committed, the spans still queued are exported, for at most
``FLUSH_TIMEOUT_S``; past it the exporters are shut down, which ends an export
still retrying and drops what is left, so that a collector that does not
answer cannot hold up the drain or the process's exit.

Attributes (:class:`RpcSpans`, called by the servicer)
======================================================

Ours are ``lighthouse.*``: ``lighthouse.stream`` (``$all`` for the global
log), ``lighthouse.event_count``, ``lighthouse.first_position`` /
``last_position`` and ``first_revision`` / ``last_revision`` (the events
appended or read; revisions only within one stream), ``lighthouse.expected_
revision`` (Append), ``lighthouse.event_id`` (GetEvent), ``lighthouse.
consumer`` and ``lighthouse.subscription.start`` (Subscribe: its span lasts
as long as the subscription), ``lighthouse.head_position`` (GetInfo), and
``lighthouse.result``: ``ok``, ``duplicate`` (an idempotent retry: nothing was
written) or ``error``. An error (``servicer._abort``, where errors are mapped
to status) adds ``error.type`` (the gRPC status code name, as the RPC
conventions say), ``lighthouse.error.reason`` (the ErrorInfo reason) and
``lighthouse.failure_class``. Stream names and ids are fine in spans (each is
one record), unlike metric labels. (The interceptor also records the
``AbortError`` a failed handler ends with as ``exception`` events, whose
traceback names the domain error; the attributes are what to query.)

The trace context in stored events
==================================

An event appended in a recording span whose metadata has no ``traceparent``
is stored with the span's: ``00-<trace id>-<span id>-<flags>``, W3C's
version 00 form, so that whoever reads the event can find the trace (and the
server span) that wrote it. A ``traceparent`` the client put there is kept,
as is ``correlation_id``. Not recording (tracing off, or the sampler said no)
means nothing is added: an event never points at a span that was not kept.

The entry is added after validation, to the bytes the store keeps (a map
entry appended to the serialized ProposedEvent is the same map with one more
key), so the limits on metadata and on an append apply to what the client
sent: an event at the limit of 64 metadata entries or 16 KiB is accepted and
stored with one entry (about 72 bytes) more, and never refused for what the
server added. Idempotent retries compare events without ``traceparent``
(``records.same_content``): a retry carries a new span's context, and is still
the same event.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import grpc

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import __version__, records
from lighthouse_store.errors import StoreError
from lighthouse_store.store import AppendCommand, AppendResult, ReadQuery
from lighthouse_store.validation import ALL

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

__all__ = [
    "TRACEPARENT",
    "RpcSpans",
    "Tracing",
    "TracingConfigError",
    "configure",
    "exporter_names",
]

log = logging.getLogger("lighthouse_store.tracing")

SERVICE_NAME = "lighthouse-store"
FLUSH_TIMEOUT_S = 2.0  # the drain's share for the last spans (supervisor.DRAIN_MARGIN_S is 5)
TRACEPARENT = "traceparent"
_ENTRY_POINTS = "opentelemetry_traces_exporter"
# The key of a "traceparent" metadata entry as protobuf writes it (field 1 of
# the entry, length 11): in an event's bytes unless the event has no such
# entry (validation re-serializes every event, so the encoding is canonical).
_KEY_ON_WIRE = b"\x0a\x0b" + TRACEPARENT.encode()

# Attribute names (ours; the RPC ones come with the interceptor).
STREAM = "lighthouse.stream"
EVENT_COUNT = "lighthouse.event_count"
FIRST_POSITION = "lighthouse.first_position"
LAST_POSITION = "lighthouse.last_position"
FIRST_REVISION = "lighthouse.first_revision"
LAST_REVISION = "lighthouse.last_revision"
EXPECTED_REVISION = "lighthouse.expected_revision"
EVENT_ID = "lighthouse.event_id"
CONSUMER = "lighthouse.consumer"
SUBSCRIPTION_START = "lighthouse.subscription.start"
HEAD_POSITION = "lighthouse.head_position"
RESULT = "lighthouse.result"
ERROR_TYPE = "error.type"  # semantic conventions
ERROR_REASON = "lighthouse.error.reason"
FAILURE_CLASS = "lighthouse.failure_class"
WORKER_INDEX = "lighthouse.worker.index"


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for tracing the daemon cannot set up."""


def exporter_names(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER asks for ([]: tracing is off), each
    checked to be installed. Raises TracingConfigError."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    wanted = environ.get("OTEL_TRACES_EXPORTER", "")
    names = [n.strip() for n in wanted.split(",") if n.strip() and n.strip() != "none"]
    resolved = [_entry_point_name(n, environ) for n in names]
    installed = {ep.name for ep in entry_points(group=_ENTRY_POINTS)}
    for name, entry in zip(names, resolved, strict=True):
        if entry not in installed:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={wanted}: no trace exporter {entry!r} is installed"
                + (f" (for {name!r})" if name != entry else "")
            )
    return resolved


def _entry_point_name(name: str, environ: Mapping[str, str]) -> str:
    """``otlp`` is the SDK's alias for the OTLP exporter of the protocol chosen."""
    if name != "otlp":
        return name
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    )
    return {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(
        protocol.strip(), f"otlp ({protocol})"
    )


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr)
    (entry,) = entry_points(group=_ENTRY_POINTS, name=name)
    exporter: SpanExporter = entry.load()()
    return exporter


@dataclass(frozen=True)
class Tracing:
    """Tracing as set up in this process: what the gRPC server and the servicer take."""

    interceptors: tuple[grpc.aio.ServerInterceptor, ...]
    spans: RpcSpans
    provider: TracerProvider
    exporters: tuple[SpanExporter, ...]

    def shutdown(self, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Export the spans still queued, for at most ``timeout`` seconds."""
        flush = threading.Thread(target=self.provider.shutdown, name="lh-trace-flush", daemon=True)
        flush.start()
        flush.join(timeout)
        if flush.is_alive():
            log.warning("tracing: spans not exported within %.1f s at shutdown were dropped",
                        timeout)  # fmt: skip
            # An export still trying (a collector that does not answer) would
            # hold up the process's exit: the exporters' shutdown ends it.
            for exporter in self.exporters:
                exporter.shutdown()
            flush.join(timeout)


def configure(
    service: str, worker: int | None = None, environ: Mapping[str, str] = os.environ
) -> Tracing | None:
    """Set up tracing of the gRPC service ``service`` (its full name) as the
    OTEL_* variables say; None when they leave it off. ``worker``: this
    process's worker index. Raises TracingConfigError."""
    names = exporter_names(environ)
    if not names:
        return None
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    ours: dict[str, str | int] = {
        "service.name": SERVICE_NAME,
        "service.version": __version__,
        "process.pid": os.getpid(),
    }
    if worker is not None:
        ours[WORKER_INDEX] = worker
    # Resource.create puts ours over the environment's; the variables win.
    resource = Resource.create(ours).merge(OTELResourceDetector().detect())
    # The sampler and span limits come from OTEL_TRACES_SAMPLER(_ARG) and
    # OTEL_*_LIMIT; shutdown is ours (bounded), not an atexit hook's.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporters = tuple(_exporter(name) for name in names)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider,
        filter_=filters.service_name(service),
    )
    log.info("tracing on: exporters %s", ", ".join(names))
    return Tracing((interceptor,), RpcSpans(trace.get_current_span), provider, exporters)


class RpcSpans:
    """What the servicer adds to the current server span; used only when
    tracing is on. Every method does nothing unless the span is recording."""

    def __init__(self, current: Callable[[], Span]) -> None:
        self._current = current

    def _span(self) -> Span | None:
        span = self._current()
        return span if span.is_recording() else None

    def append(self, command: AppendCommand) -> AppendCommand:
        """Note a validated append; the command with the span's traceparent in
        the metadata of each event that has none."""
        span = self._span()
        if span is None:
            return command
        span.set_attributes({
            STREAM: command.stream,
            EVENT_COUNT: len(command.proposed),
            EXPECTED_REVISION: str(command.expected),
        })  # fmt: skip
        return _with_traceparent(command, _traceparent(span))

    def appended(self, result: AppendResult) -> None:
        span = self._span()
        if span is None:
            return
        n = result.last_position - result.first_position
        span.set_attributes({
            FIRST_POSITION: result.first_position,
            LAST_POSITION: result.last_position,
            FIRST_REVISION: result.last_revision - n,
            LAST_REVISION: result.last_revision,
            RESULT: "duplicate" if result.duplicate else "ok",
        })  # fmt: skip

    def read(self, query: ReadQuery) -> None:
        span = self._span()
        if span is not None:
            span.set_attributes({STREAM: query.stream or ALL, EVENT_COUNT: 0})

    def read_page(self, stored: Sequence[bytes]) -> None:
        """Note a page of a read (stored records, at least one)."""
        span = self._span()
        if span is None:
            return
        attributes: Any = getattr(span, "attributes", None) or {}
        last = records.decode(stored[-1])
        noted = {EVENT_COUNT: int(attributes.get(EVENT_COUNT, 0)) + len(stored)}
        noted[LAST_POSITION] = last.position
        if attributes.get(STREAM) != ALL:
            noted[LAST_REVISION] = last.revision
        if FIRST_POSITION not in attributes:
            first = records.decode(stored[0]) if len(stored) > 1 else last
            noted[FIRST_POSITION] = first.position
            if attributes.get(STREAM) != ALL:
                noted[FIRST_REVISION] = first.revision
        span.set_attributes(noted)

    def ok(self) -> None:
        span = self._span()
        if span is not None:
            span.set_attribute(RESULT, "ok")

    def got_event(self, stored: bytes) -> None:
        span = self._span()
        if span is None:
            return
        event = records.decode(stored)
        span.set_attributes({
            EVENT_ID: event.event_id,
            STREAM: event.stream,
            FIRST_POSITION: event.position,
            LAST_POSITION: event.position,
            FIRST_REVISION: event.revision,
            LAST_REVISION: event.revision,
            EVENT_COUNT: 1,
            RESULT: "ok",
        })  # fmt: skip

    def info(self, head_position: int) -> None:
        span = self._span()
        if span is not None:
            span.set_attributes({HEAD_POSITION: head_position, RESULT: "ok"})

    async def subscription(
        self, requests: AsyncIterator[pb.SubscribeRequest]
    ) -> AsyncIterator[pb.SubscribeRequest]:
        """``requests``, unchanged; the first one's options noted."""
        first = True
        async for request in requests:
            if first and request.WhichOneof("kind") == "options":
                first = False
                self._subscription_options(request.options)
            yield request

    def _subscription_options(self, options: pb.SubscribeOptions) -> None:
        span = self._span()
        if span is None:
            return
        start = options.WhichOneof("start") or "from_start"
        if start == "after_position":
            start = f"after_position {options.after_position}"
        span.set_attributes({CONSUMER: options.consumer, SUBSCRIPTION_START: start})

    def failed(self, error: StoreError, code: grpc.StatusCode) -> None:
        """Note the error a call ends with (``servicer._abort``)."""
        span = self._span()
        if span is None:
            return
        span.set_attributes({
            RESULT: "error",
            ERROR_TYPE: code.name,
            ERROR_REASON: error.reason,
            FAILURE_CLASS: error.failure_class.value,
        })  # fmt: skip


def _traceparent(span: Span) -> str:
    """The W3C traceparent (version 00) of ``span``."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _with_traceparent(command: AppendCommand, traceparent: str) -> AppendCommand:
    """``command`` with ``traceparent`` in the metadata of each event that has
    none: one map entry appended to the event's bytes."""
    entry = records.metadata_entry(TRACEPARENT, traceparent)
    proposed = tuple(p if _has_traceparent(p) else p + entry for p in command.proposed)
    return replace(command, proposed=proposed, size=sum(map(len, proposed)))


def _has_traceparent(proposed: bytes) -> bool:
    # The bytes test is exact when it says no; data that happens to hold the
    # same bytes is told apart by parsing.
    if _KEY_ON_WIRE not in proposed:
        return False
    return TRACEPARENT in pb.ProposedEvent.FromString(proposed).metadata
