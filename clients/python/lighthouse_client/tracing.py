"""Optional tracing (``pip install lighthouse-store-client[tracing]``).

``AsyncStoreClient(..., tracing=True)`` installs OpenTelemetry's gRPC client
interceptors (opentelemetry-instrumentation-grpc): every call gets a client
span, and the W3C ``traceparent`` of the current context is injected into the
gRPC metadata, so the daemon's spans join the caller's trace. The rest of the
client never imports OpenTelemetry.
"""

from __future__ import annotations

from typing import Any


def client_interceptors() -> list[Any]:
    try:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError(
            "tracing needs the extra: pip install 'lighthouse-store-client[tracing]'"
        ) from exc
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
