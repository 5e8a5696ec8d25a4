"""Lighthouse Store client.

``StoreClient`` (blocking) and ``AsyncStoreClient`` (asyncio) append, read,
look up and subscribe, with retries that are safe (every event carries an
id), subscriptions that resume where they broke off, and a degraded mode:
reads from a cache and appends to a durable outbox while the daemon cannot
be reached. The values are frozen dataclasses; protobuf types never reach the
public API (tools that need the generated modules import them from the
``lighthouse_proto`` distribution).
"""

from lighthouse_client._breaker import BreakerState, CircuitBreaker
from lighthouse_client._cache import ReadCache
from lighthouse_client._outbox import DeadLetter, Outbox, OutboxEntry
from lighthouse_client._retry import RetryPolicy
from lighthouse_client._security import Tls
from lighthouse_client._subscription import AsyncSubscription
from lighthouse_client._types import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    EventResult,
    ExpectedRevision,
    Filter,
    Limits,
    NewEvent,
    ReadResult,
    RecordedEvent,
    StoreInfo,
    StreamState,
    uuid7,
)
from lighthouse_client.aio import AsyncStoreClient
from lighthouse_client.client import StoreClient, Subscription
from lighthouse_client.exceptions import (
    CircuitOpen,
    Corruption,
    DeadlineExceeded,
    EventIdConflict,
    EventNotFound,
    FailureClass,
    Internal,
    InvalidRequest,
    NotFound,
    Overloaded,
    PermissionDenied,
    StorageFull,
    StoreError,
    StreamNotFound,
    Unauthenticated,
    Unavailable,
    WrongExpectedRevision,
    handle_rpc_error,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "AsyncStoreClient",
    "AsyncSubscription",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpen",
    "Corruption",
    "DeadLetter",
    "DeadlineExceeded",
    "EventIdConflict",
    "EventNotFound",
    "EventResult",
    "ExpectedRevision",
    "FailureClass",
    "Filter",
    "Internal",
    "InvalidRequest",
    "Limits",
    "NewEvent",
    "NotFound",
    "Outbox",
    "OutboxEntry",
    "Overloaded",
    "PermissionDenied",
    "ReadCache",
    "ReadResult",
    "RecordedEvent",
    "RetryPolicy",
    "StorageFull",
    "StoreClient",
    "StoreError",
    "StoreInfo",
    "StreamNotFound",
    "StreamState",
    "Subscription",
    "Tls",
    "Unauthenticated",
    "Unavailable",
    "WrongExpectedRevision",
    "handle_rpc_error",
    "uuid7",
]
