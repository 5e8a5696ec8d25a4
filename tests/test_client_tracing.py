"""Optional tracing: client spans, and W3C traceparent in the gRPC metadata.

The receiving side here is a small real grpc.aio server on loopback that
records the metadata it gets; the daemon's own spans are tests/test_tracing.py's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lighthouse_client import AsyncStoreClient, StoreClient
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.servicer import SERVICE_NAME

# (OpenTelemetry's provider is set once per process.)
EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(PROVIDER)


@pytest.mark.parametrize("blocking", [False, True], ids=["AsyncStoreClient", "StoreClient"])
def test_client_spans_and_traceparent(blocking: bool) -> None:
    exporter = EXPORTER
    exporter.clear()
    tracer = PROVIDER.get_tracer("test")
    seen: list[dict[str, str]] = []

    async def get_info(request: pb.GetInfoRequest, context: Any) -> pb.GetInfoResponse:
        seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return pb.GetInfoResponse(head_position=7)

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            get_info,
            request_deserializer=pb.GetInfoRequest.FromString,
            response_serializer=pb.GetInfoResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"GetInfo": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            if blocking:  # (in a thread: this loop serves the calls)
                with (
                    StoreClient(f"127.0.0.1:{port}", tracing=True) as sync_client,
                    tracer.start_as_current_span("caller") as parent,
                ):
                    info = await asyncio.to_thread(sync_client.info)
                    trace_id = format(parent.get_span_context().trace_id, "032x")
            else:
                async with AsyncStoreClient(f"127.0.0.1:{port}", tracing=True) as client:
                    with tracer.start_as_current_span("caller") as parent:
                        info = await client.info()
                        trace_id = format(parent.get_span_context().trace_id, "032x")
        finally:
            await server.stop(None)
        assert info.head_position == 7
        (metadata,) = seen
        assert metadata["traceparent"].split("-")[1] == trace_id
        spans = {s.name: s for s in exporter.get_finished_spans()}
        client_span = spans[f"/{SERVICE_NAME}/GetInfo"]
        assert client_span.kind is trace.SpanKind.CLIENT
        assert format(client_span.context.trace_id, "032x") == trace_id

    asyncio.run(main())
