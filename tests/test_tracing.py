"""Server-side tracing (tracing.py), over the wire: a real daemon exports its
spans with OTLP/gRPC to a trace receiver in the test (a gRPC server on
127.0.0.1 implementing OTLP's TraceService from opentelemetry-proto); the
client sends W3C ``traceparent`` in the gRPC metadata of its calls."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from support import (
    RPC_TIMEOUT,
    DaemonFactory,
    append_request,
    error_info,
    get_event,
    new_event,
    read_stream,
    spread_stubs,
)

from lighthouse_proto.limits import Limits
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.servicer import SERVICE_NAME
from lighthouse_store.testing import DaemonProcess

WAIT_S = 60.0  # for spans to arrive: only there so a broken export fails instead of hanging


@dataclass(frozen=True)
class Received:
    """One span as the receiver got it, with its resource's attributes."""

    span: Span
    resource: dict[str, Any]

    @property
    def attributes(self) -> dict[str, Any]:
        return _attributes(self.span.attributes)

    @property
    def method(self) -> str:
        return self.span.name.rsplit("/", 1)[-1]


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        assert isinstance(kv, KeyValue)
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """OTLP/gRPC's TraceService: keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Received] = []
        self.endpoint = ""

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = [
            Received(span, _attributes(rs.resource.attributes))
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Received]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[Received]], bool]) -> list[Received]:
        deadline = time.monotonic() + WAIT_S
        while not done(spans := self.spans()):
            assert time.monotonic() < deadline, f"spans did not arrive: {spans}"
            time.sleep(0.05)
        return spans


@pytest.fixture
def receiver() -> Generator[TraceReceiver, None, None]:
    receiver = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        server.stop(0)


def _otel_env(receiver: TraceReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms
    })  # fmt: skip
    env.update(extra)
    return env


@dataclass(frozen=True)
class ClientSpan:
    """A caller's span: what it sends as ``traceparent``."""

    trace_id: str = ""
    span_id: str = ""
    sampled: bool = True

    @classmethod
    def new(cls, trace_id: str = "", sampled: bool = True) -> ClientSpan:
        return cls(trace_id or secrets.token_hex(16), secrets.token_hex(8), sampled)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", self.traceparent),)


def _server_spans(spans: list[Received], trace_id: str) -> dict[str, list[Received]]:
    by_method: dict[str, list[Received]] = {}
    for r in spans:
        if r.span.trace_id.hex() == trace_id:
            by_method.setdefault(r.method, []).append(r)
    return by_method


def _one(spans: list[Received], parent: ClientSpan) -> Received:
    (r,) = [r for r in spans if r.span.parent_span_id.hex() == parent.span_id]
    assert r.span.kind == Span.SPAN_KIND_SERVER
    assert r.span.trace_id.hex() == parent.trace_id
    return r


def _subscribe_until_caught_up(stub: Any, caller: ClientSpan, consumer: str) -> None:
    options = pb.SubscribeOptions(consumer=consumer, from_start=empty_pb2.Empty())
    call = stub.Subscribe(
        iter([pb.SubscribeRequest(options=options)]), metadata=caller.metadata, timeout=RPC_TIMEOUT
    )
    for response in call:
        if response.WhichOneof("kind") == "caught_up_position":
            break
    call.cancel()


def _append(stub: Any, caller: ClientSpan, request: pb.AppendRequest) -> pb.AppendResponse:
    response: pb.AppendResponse = stub.Append(
        request, metadata=caller.metadata, timeout=RPC_TIMEOUT
    )
    return response


@dataclass
class Calls:
    """The calls of one client in one trace, each from a span of its own, and
    what they answered."""

    stream: str
    trace_id: str = field(default_factory=lambda: secrets.token_hex(16))
    own: ClientSpan = field(default_factory=ClientSpan.new)  # in an event's metadata
    callers: dict[str, ClientSpan] = field(default_factory=dict)
    sent: list[pb.ProposedEvent] = field(default_factory=list)
    appended: pb.AppendResponse | None = None
    stored: list[pb.RecordedEvent] = field(default_factory=list)
    by_id: pb.RecordedEvent | None = None

    def caller(self, name: str) -> ClientSpan:
        return self.callers.setdefault(name, ClientSpan.new(self.trace_id))

    def run(self, stub: Any) -> Calls:
        correlation = {"correlation_id": f"corr-{self.stream}"}
        self.sent = [
            new_event(metadata=correlation),
            new_event(metadata={**correlation, "traceparent": self.own.traceparent}),
        ]
        self.appended = _append(stub, self.caller("append"), append_request(self.stream, self.sent))
        pages = stub.Read(
            pb.ReadRequest(stream=self.stream),
            metadata=self.caller("read").metadata,
            timeout=RPC_TIMEOUT,
        )
        self.stored = [e for page in pages for e in page.events]
        self.by_id = stub.GetEvent(
            pb.GetEventRequest(event_id=self.sent[0].event_id),
            metadata=self.caller("get").metadata,
            timeout=RPC_TIMEOUT,
        ).event
        with pytest.raises(grpc.RpcError) as refused:
            _append(stub, self.caller("wrong"), append_request(self.stream, [new_event()], 99))
        assert error_info(refused.value).metadata["failure_class"] == "human_intervention"
        _subscribe_until_caught_up(stub, self.caller("subscribe"), f"reader-{self.stream}")
        return self


TRACED = {"Append": 2, "Read": 1, "GetEvent": 1, "Subscribe": 1}  # spans per Calls.run


def test_spans_parents_attributes_and_stored_traceparent(
    daemon_factory: DaemonFactory, receiver: TraceReceiver, workers: int
) -> None:
    daemon = daemon_factory(env=_otel_env(receiver), workers=workers)
    runs = [
        Calls(f"traced-{i}").run(stub)
        for i, stub in enumerate(spread_stubs(daemon, 2))  # a connection to each worker
    ]
    spans = receiver.wait_for(
        lambda got: all(
            {m: len(s) for m, s in _server_spans(got, c.trace_id).items()} == TRACED for c in runs
        )
    )
    workers_seen = set()
    for c in runs:
        assert c.appended is not None and c.by_id is not None
        by_method = _server_spans(spans, c.trace_id)
        a = _one(by_method["Append"], c.caller("append"))
        assert a.span.name == f"/{SERVICE_NAME}/Append"
        assert a.attributes == a.attributes | {
            "rpc.system": "grpc",
            "rpc.service": SERVICE_NAME,
            "rpc.method": "Append",
            "rpc.grpc.status_code": 0,
            "lighthouse.stream": c.stream,
            "lighthouse.event_count": 2,
            "lighthouse.expected_revision": "any",
            "lighthouse.first_position": c.appended.first_position,
            "lighthouse.last_position": c.appended.last_position,
            "lighthouse.first_revision": 0,
            "lighthouse.last_revision": 1,
            "lighthouse.result": "ok",
        }
        assert a.resource["service.name"] == "lighthouse-store"
        pids = [daemon.pid] if workers == 1 else daemon.worker_pids()
        assert a.resource["process.pid"] in pids
        workers_seen.add(a.resource.get("lighthouse.worker.index"))

        # The event without a traceparent got the Append span's; the other kept its own.
        server = f"00-{c.trace_id}-{a.span.span_id.hex()}-01"
        assert [dict(e.metadata) for e in c.stored] == [
            {**c.sent[0].metadata, "traceparent": server},
            {**c.sent[1].metadata, "traceparent": c.own.traceparent},
        ]
        assert dict(c.by_id.metadata) == dict(c.stored[0].metadata)

        r = _one(by_method["Read"], c.caller("read"))
        assert r.attributes == r.attributes | {
            "lighthouse.stream": c.stream,
            "lighthouse.event_count": 2,
            "lighthouse.first_position": c.appended.first_position,
            "lighthouse.last_position": c.appended.last_position,
            "lighthouse.first_revision": 0,
            "lighthouse.last_revision": 1,
            "lighthouse.result": "ok",
        }
        g = _one(by_method["GetEvent"], c.caller("get"))
        assert g.attributes == g.attributes | {
            "lighthouse.event_id": c.sent[0].event_id,
            "lighthouse.stream": c.stream,
            "lighthouse.first_position": c.appended.first_position,
            "lighthouse.result": "ok",
        }
        w = _one(by_method["Append"], c.caller("wrong"))
        assert w.attributes == w.attributes | {
            "rpc.grpc.status_code": grpc.StatusCode.FAILED_PRECONDITION.value[0],
            "lighthouse.result": "error",
            "error.type": "FAILED_PRECONDITION",
            "lighthouse.error.reason": "WRONG_EXPECTED_REVISION",
            "lighthouse.failure_class": "human_intervention",
            "lighthouse.expected_revision": "99",
        }
        assert "lighthouse.first_position" not in w.attributes
        s = _one(by_method["Subscribe"], c.caller("subscribe"))
        assert s.attributes == s.attributes | {
            "rpc.method": "Subscribe",
            "lighthouse.consumer": f"reader-{c.stream}",
            "lighthouse.subscription.start": "from_start",
        }
    assert workers_seen == ({None} if workers == 1 else {0, 1})


def test_spans_queued_at_shutdown_are_exported(
    daemon_factory: DaemonFactory, receiver: TraceReceiver, workers: int
) -> None:
    # A schedule delay longer than the test: the spans leave at the drain or not at all.
    env = _otel_env(receiver, OTEL_BSP_SCHEDULE_DELAY="600000")
    daemon = daemon_factory(env=env, workers=workers)
    callers = [ClientSpan.new() for _ in range(2)]
    for stub, caller in zip(spread_stubs(daemon, 2), callers, strict=True):
        _append(stub, caller, append_request("flushed", [new_event()]))
        health_pb2_grpc.HealthStub(daemon.channel()).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME),
            metadata=caller.metadata,
            timeout=RPC_TIMEOUT,
        )
    assert receiver.spans() == []
    assert daemon.stop() == 0
    spans = receiver.spans()
    for caller in callers:
        # Every span of the caller's trace: its Append; health checks are not traced.
        assert list(_server_spans(spans, caller.trace_id)) == ["Append"]
        _one(_server_spans(spans, caller.trace_id)["Append"], caller)
    assert {r.resource.get("lighthouse.worker.index") for r in spans} == (
        {None} if workers == 1 else {0, 1}
    )


@pytest.mark.parametrize(
    ("otel", "caller"),
    [
        ({"OTEL_TRACES_EXPORTER": "none"}, ClientSpan.new()),
        ({"OTEL_TRACES_EXPORTER": ""}, ClientSpan.new()),
        ({"OTEL_SDK_DISABLED": "true"}, ClientSpan.new()),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, ClientSpan.new()),
        ({}, ClientSpan.new(sampled=False)),  # the caller's trace is not sampled
    ],
    ids=["exporter-none", "exporter-unset", "sdk-disabled", "sampler-off", "caller-unsampled"],
)
def test_no_span_no_traceparent_when_not_recording(
    daemon_factory: DaemonFactory,
    receiver: TraceReceiver,
    otel: Mapping[str, str],
    caller: ClientSpan,
) -> None:
    """Off (or not sampled): nothing is exported, even with an endpoint set,
    and events are stored as sent."""
    env = _otel_env(receiver, **otel)
    if otel.get("OTEL_TRACES_EXPORTER") == "":
        del env["OTEL_TRACES_EXPORTER"]
    daemon = daemon_factory(env=env)
    stub = daemon.stub()
    sent = new_event(metadata={"correlation_id": "c-1"})
    _append(stub, caller, append_request("untraced", [sent]))
    assert daemon.stop() == 0  # a provider, had there been one, flushed here
    assert receiver.spans() == []
    daemon.start()
    (event,) = read_stream(daemon.stub(), "untraced")
    assert dict(event.metadata) == {"correlation_id": "c-1"}
    on = "tracing on" in daemon.log_text()
    assert on == ("OTEL_TRACES_SAMPLER" in otel or not otel)  # the interceptor is not installed


def test_traceparent_added_after_validation_and_not_content(
    daemon_factory: DaemonFactory, receiver: TraceReceiver
) -> None:
    daemon = daemon_factory(env=_otel_env(receiver))
    stub = daemon.stub()
    limits = Limits()
    # Metadata at both limits (entries and bytes): the added entry must not make it too big.
    n = limits.max_metadata_entries
    keys = [f"k{i:02d}" for i in range(n)]
    value_len = limits.max_metadata_bytes // n - 3
    full = {k: "v" * value_len for k in keys}
    assert sum(len(k) + len(v) for k, v in full.items()) == limits.max_metadata_bytes
    # Data holding the bytes of a "traceparent" key: still an event without one.
    lookalike = b"\x0a\x0btraceparent"
    events = [new_event(metadata=full), new_event(data=lookalike)]
    first, retry = ClientSpan.new(), ClientSpan.new()
    appended = _append(stub, first, append_request("limits", events))
    again = _append(stub, retry, append_request("limits", events))  # an idempotent retry
    assert again == appended

    spans = receiver.wait_for(
        lambda got: all(_server_spans(got, c.trace_id).get("Append") for c in (first, retry))
    )
    a = _one(_server_spans(spans, first.trace_id)["Append"], first)
    assert a.attributes["lighthouse.result"] == "ok"
    r = _one(_server_spans(spans, retry.trace_id)["Append"], retry)
    assert r.attributes["lighthouse.result"] == "duplicate"
    assert r.attributes["lighthouse.first_position"] == appended.first_position
    server = f"00-{first.trace_id}-{a.span.span_id.hex()}-01"
    stored = read_stream(stub, "limits")
    assert [e.data for e in stored] == [b"{}", lookalike]
    assert dict(stored[0].metadata) == {**full, "traceparent": server}
    assert dict(stored[1].metadata) == {"traceparent": server}
    assert dict(get_event(stub, events[0].event_id).metadata) == dict(stored[0].metadata)


def test_unknown_exporter_stops_the_daemon_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp,nosuch"}
    daemon = DaemonProcess(tmp_path / "data", env=env, workers=2)
    done = subprocess.run(daemon.command(), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "OTEL_TRACES_EXPORTER=otlp,nosuch: no trace exporter 'nosuch' is installed" in (
        done.stderr
    )


@pytest.mark.parametrize(("exporter", "loaded"), [(None, False), ("console", True)])
def test_off_loads_nothing_of_opentelemetry(exporter: str | None, loaded: bool) -> None:
    """Off, the daemon's server module sets nothing up and imports no part of
    OpenTelemetry (on, for contrast, it does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if exporter:
        env["OTEL_TRACES_EXPORTER"] = exporter
    script = (
        "import sys\n"
        "from lighthouse_store import server, tracing\n"
        "traced = tracing.configure(server.SERVICE_NAME)\n"
        "print(traced is not None, any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(loaded), str(loaded)]


def test_a_collector_that_does_not_answer_does_not_hold_up_the_drain(
    daemon_factory: DaemonFactory, receiver: TraceReceiver
) -> None:
    """The last spans get FLUSH_TIMEOUT_S (2 s), then the exporters are shut
    down, inside the supervisor's margin for a worker's drain (5 s past the
    grace): the workers exit cleanly while the exporter would retry for a
    minute."""
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        env = _otel_env(
            receiver,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}",
            OTEL_EXPORTER_OTLP_TIMEOUT="60",  # seconds
            OTEL_BSP_SCHEDULE_DELAY="600000",
        )
        daemon = daemon_factory(env=env, workers=2, extra_args=["--shutdown-grace-seconds", "0"])
        for stub in spread_stubs(daemon, 2):
            _append(stub, ClientSpan.new(), append_request("unexported", [new_event()]))
        assert daemon.stop() == 0  # no worker had to be killed
    assert daemon.log_text().count("spans not exported within 2.0 s at shutdown") == 2
