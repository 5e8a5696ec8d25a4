"""The gRPC servicer: protobuf in, domain calls, protobuf (or stored bytes) out.

Every method is registered with identity (de)serializers: requests are parsed
inside the error guard, and responses are bytes. Read, GetEvent and Subscribe
answer with stored records as they are on disk (a stored record is already a
serialized RecordedEvent, ``records.py``), building their responses by
concatenation, never parsing or re-encoding an event.

Errors: handlers raise domain errors; :func:`_guard` turns them into a gRPC
status through ``status.to_status`` (the one mapping), and anything
unexpected into INTERNAL with an incident id that is only logged. Each
failed request is logged there, once, with its ``method``, ``code``,
``reason``, ``failure_class`` and ``peer`` (the traceback too, for an
unexpected error), at ``status.log_level``; a successful one is not. A call
its client cancels is no failure: gRPC ends the handler with CancelledError,
which is not caught here, and gRPC logs it at debug (``logs.py``). The guard
is also where each call is counted and timed, and each error counted by code
and failure class (``metrics.py``).

Tracing (``tracing.py``): with tracing on, the servicer gets an
:class:`~lighthouse_store.tracing.RpcSpans` and notes on the current span
what each call did (and, on Append, puts the span's ``traceparent`` into the
events that have none); off, it holds None and tests only that.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import __version__, records, status, validation
from lighthouse_store.access import Access
from lighthouse_store.calls import Calls
from lighthouse_store.config import Config, Durability
from lighthouse_store.degradation import WriteGate
from lighthouse_store.errors import (
    EventNotFound,
    InvalidArgument,
    PermissionDenied,
    ShuttingDown,
    StoreError,
    Unauthenticated,
)
from lighthouse_store.metrics import DaemonMetrics, RpcInstruments
from lighthouse_store.principals import Principal
from lighthouse_store.ratelimit import RateLimiter, Rates
from lighthouse_store.store import AppendCommand, EventStore
from lighthouse_store.stream_caps import StreamCaps
from lighthouse_store.subscriptions import SubscriptionHub
from lighthouse_store.writer import GroupCommitWriter

if TYPE_CHECKING:
    from lighthouse_store.tracing import RpcSpans

log = logging.getLogger("lighthouse_store.servicer")

SERVICE = pb.DESCRIPTOR.services_by_name["EventStoreService"]
SERVICE_NAME: str = SERVICE.full_name

_R = TypeVar("_R")
_DURABILITY = {Durability.FSYNC: pb.DURABILITY_FSYNC, Durability.ASYNC: pb.DURABILITY_ASYNC}


async def _abort(
    context: grpc.aio.ServicerContext,
    exc: Exception,
    method: str,
    request: object,
    spans: RpcSpans | None,
    metrics: DaemonMetrics,
) -> None:
    """End the call with the status of ``exc``, log it (the one line of a
    failed request), count it and note it on the call's span."""
    fields: dict[str, str] = {}
    if correlation_id := _correlation_id(method, request):
        fields["correlation_id"] = correlation_id
    cause: Exception | None = None
    if isinstance(exc, StoreError):
        error: StoreError = exc
    else:
        fields["incident"] = uuid.uuid4().hex[:12]
        error, cause = status.internal(fields["incident"]), exc
    code, message, trailers = status.to_status(error)
    metrics.rpc_error(method, code.name, error.failure_class.value, error.reason)
    fields.update(
        method=method,
        code=code.name,
        reason=error.reason,
        failure_class=error.failure_class.value,
        peer=context.peer(),
    )
    if not isinstance(error, Unauthenticated | PermissionDenied):  # the audit line said it
        log.log(status.log_level(error, code), "%s failed: %s: %s", method, code.name, message,
                exc_info=cause, extra={"fields": fields})  # fmt: skip
    if spans is not None:
        spans.failed(error, code)
    await context.abort(code, message, trailing_metadata=trailers)


def _method(fn: Callable[..., object]) -> str:
    """The RPC a handler serves, from its name: ``get_event`` serves ``GetEvent``."""
    return "".join(word.title() for word in fn.__name__.split("_"))


def _guard(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext, Principal], Awaitable[_R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[_R]]:
    method = _method(fn)

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> _R:
        rpc = self._metrics.rpc[method]
        started = _started(rpc)
        try:
            with self._calls.track(stream=False):
                principal = self._access.authenticate(context, method)
                self._rates.take(principal.key, requests=1)
                return await fn(self, request, context, principal)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method, request, self._spans, self._metrics)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            if rpc is not None and rpc.duration is not None:
                rpc.duration.observe(time.perf_counter() - started)

    return wrapper


def _guard_stream(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext, Principal], AsyncIterator[_R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[_R]]:
    method = _method(fn)

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_R]:
        rpc = self._metrics.rpc[method]
        started = _started(rpc)
        try:
            with self._calls.track(stream=True):
                principal = self._access.authenticate(context, method)
                self._rates.take(principal.key, requests=1)
                with self._streams.admit(principal.key):
                    async for item in fn(self, request, context, principal):
                        yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc, method, request, self._spans, self._metrics)
        finally:
            if rpc is not None and rpc.duration is not None:
                rpc.duration.observe(time.perf_counter() - started)

    return wrapper


def _started(rpc: RpcInstruments | None) -> float:
    """Count the call; when it started (0.0 with ``--metrics off``)."""
    if rpc is None:
        return 0.0
    rpc.requests.inc()
    return time.perf_counter()


class EventStoreServicer:
    def __init__(
        self,
        config: Config,
        store: EventStore,
        writer: GroupCommitWriter,
        readers: Executor,
        hub: SubscriptionHub,
        metrics: DaemonMetrics,
        spans: RpcSpans | None = None,
        calls: Calls | None = None,
        *,
        gate: WriteGate | None = None,
        access: Access | None = None,
    ) -> None:
        self._access = access or Access.open()  # who each call is, what it may do
        self._streams = StreamCaps(config.max_streams, config.max_streams_per_client)
        self._rates = RateLimiter(Rates(config.rate_requests, config.rate_events,
                                        config.rate_bytes, config.rate_new_streams))  # fmt: skip
        self._calls = calls or Calls()  # shutdown ends streams through it (calls.py)
        self._gate = gate or WriteGate()
        self._hub = hub
        self._metrics = metrics
        self._spans = spans  # None: tracing is off
        self._config = config
        self._store = store
        self._writer = writer
        self._readers = readers

    @_guard
    async def append(
        self, raw: bytes, context: grpc.aio.ServicerContext, principal: Principal
    ) -> bytes:
        # The parsed request (a copy of ``raw``) is gone before the append
        # waits in the writer's queue; the command holds the events' bytes.
        command = self._append_command(raw)
        self._access.check_append(principal, "Append", command.stream)
        # new_streams=0: nothing taken, but a bucket in debt (streams created
        # faster than the limit, charged after their commits) makes it wait.
        self._rates.take(
            principal.key, events=len(command.proposed), bytes=command.size, new_streams=0
        )
        spans = self._spans
        if spans is not None:
            command = spans.append(command)  # after validation: limits are on what was sent
        result = await self._writer.append(command, owner=principal.key)
        if not result.duplicate and result.last_revision + 1 == len(command.proposed):
            self._rates.charge(principal.key, "new_streams", 1)  # this append created it
        if spans is not None:
            spans.appended(result)
        return pb.AppendResponse(
            first_position=result.first_position,
            last_position=result.last_position,
            last_revision=result.last_revision,
        ).SerializeToString()

    def _append_command(self, raw: bytes) -> AppendCommand:
        request = _parse(pb.AppendRequest, raw)
        return validation.append_command(request, self._config.limits, len(raw))

    @_guard_stream
    async def read(
        self, raw: bytes, context: grpc.aio.ServicerContext, principal: Principal
    ) -> AsyncIterator[bytes]:
        query = validation.read_query(_parse(pb.ReadRequest, raw))
        if query.stream is None:
            self._access.check_read_all(principal, "Read", query.stream_prefixes, query.streams)
        else:
            self._access.check_read(principal, "Read", query.stream)
        spans = self._spans
        if spans is not None:
            spans.read(query)
        loop = asyncio.get_running_loop()
        cfg = self._config
        cursor = None
        while True:
            if self._calls.closing:
                raise ShuttingDown("the store is shutting down; read again from the last position")
            page = await loop.run_in_executor(
                self._readers, self._store.read_page, query, cursor, cfg.page_events, cfg.page_bytes
            )
            cursor = page.cursor
            if page.records:
                if spans is not None:
                    spans.read_page(page.records)
                yield records.repeated_events(page.records)
            if cursor is None:
                if spans is not None:
                    spans.ok()
                return

    @_guard
    async def get_event(
        self, raw: bytes, context: grpc.aio.ServicerContext, principal: Principal
    ) -> bytes:
        raw_id, canonical = validation.event_id(_parse(pb.GetEventRequest, raw).event_id)
        record = self._store.get_event(raw_id)  # one B-tree lookup: cheaper than a thread hop
        if record is None or not self._access.may_see(principal, "GetEvent", record):
            raise EventNotFound(canonical)
        if self._spans is not None:
            self._spans.got_event(record)
        return records.repeated_events([record])  # GetEventResponse.event is field 1

    @_guard
    async def get_info(
        self, raw: bytes, context: grpc.aio.ServicerContext, principal: Principal
    ) -> bytes:
        _parse(pb.GetInfoRequest, raw)
        limits = self._config.limits
        # From storage: with several workers, this one may not have heard of
        # another's latest commit yet (wakeups.py).
        head = self._store.last_position()
        if self._spans is not None:
            self._spans.info(head)
        return pb.GetInfoResponse(
            head_position=head,
            server_version=__version__,
            durability=_DURABILITY[self._store.durability],  # as LMDB is really set up
            limits=pb.Limits(
                max_event_data_bytes=limits.max_event_data_bytes,
                max_events_per_append=limits.max_events_per_append,
                max_append_bytes=limits.max_append_bytes,
                max_metadata_entries=limits.max_metadata_entries,
                max_metadata_bytes=limits.max_metadata_bytes,
            ),
            subscriber_count=self._hub.count,
            worker_pid=os.getpid(),
            degradation_level=self._gate.level,
        ).SerializeToString()

    @_guard_stream
    async def subscribe(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        principal: Principal,
    ) -> AsyncIterator[bytes]:
        parsed = self._authorized(_parsed(requests), principal)
        if self._spans is not None:
            parsed = self._spans.subscription(parsed)
        async for message in self._hub.serve(parsed):
            yield message


    async def _authorized(
        self, requests: AsyncIterator[pb.SubscribeRequest], principal: Principal
    ) -> AsyncIterator[pb.SubscribeRequest]:
        """A subscription's requests, once its options are allowed: it reads
        ``$all`` through its filter, and a named consumer's acks move that
        consumer's checkpoint (``access.py``)."""
        async for request in requests:
            if request.WhichOneof("kind") == "options":
                options = request.options
                f = options.filter
                self._access.check_read_all(
                    principal, "Subscribe", f.stream_prefixes, f.streams
                )
                if options.consumer:
                    self._access.check_consumer(
                        principal, "Subscribe", options.consumer, [*f.stream_prefixes, *f.streams]
                    )
            yield request


def _correlation_id(method: str, request: object) -> str:
    """A failed request's correlation id, for its log line: an Append's
    first event's (SPEC: the correlation id is kept in event metadata).
    Parsed again here, on failure only, so that a success pays nothing."""
    if method != "Append" or not isinstance(request, bytes):
        return ""
    try:
        events = pb.AppendRequest.FromString(request).events
    except DecodeError:
        return ""
    return events[0].metadata.get("correlation_id", "") if events else ""


def _as_is(message: bytes) -> bytes:
    """The (de)serializer of every handler: requests and responses stay bytes."""
    return message


_M = TypeVar("_M", bound=Message)


def _parse(cls: type[_M], raw: bytes) -> _M:
    """Requests arrive as bytes and are parsed here, inside the error guard: a
    malformed message (bad wire format, invalid UTF-8) is INVALID_ARGUMENT
    like any other bad input, not gRPC's UNKNOWN with an exception name."""
    try:
        return cls.FromString(raw)
    except DecodeError:
        raise InvalidArgument(f"request: not a valid {cls.DESCRIPTOR.name}") from None


async def _parsed(requests: AsyncIterator[bytes]) -> AsyncIterator[pb.SubscribeRequest]:
    async for raw in requests:
        yield _parse(pb.SubscribeRequest, raw)


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def method_handlers(servicer: EventStoreServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, one per method in the descriptor. Every handler
    takes and returns bytes (requests are parsed inside the error guard,
    responses are serialized or concatenated by the handler), so the only
    per-method choice is the streaming shape, read from the descriptor."""
    implementations = {
        "Append": servicer.append,
        "Read": servicer.read,
        "GetEvent": servicer.get_event,
        "GetInfo": servicer.get_info,
        "Subscribe": servicer.subscribe,
    }
    methods = {m.name: m for m in SERVICE.methods}
    assert implementations.keys() == methods.keys(), "handlers out of step with the proto"
    return {
        name: _FACTORIES[(m.client_streaming, m.server_streaming)](
            implementations[name], request_deserializer=_as_is, response_serializer=_as_is
        )
        for name, m in methods.items()
    }
