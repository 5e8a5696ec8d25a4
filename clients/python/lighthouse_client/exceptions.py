"""The client's one exception tree, and the one place that builds it.

Every exception says its failure class (SPEC §4): ``recoverable`` (the client
retries these with backoff), ``human_intervention`` (do not retry; report)
or ``restart_required`` (stop using that node). :func:`handle_rpc_error`
turns a ``grpc.RpcError`` into one of these from its status code and the
``google.rpc.ErrorInfo`` / ``RetryInfo`` the daemon puts in the details.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from lighthouse_client import _rpc_status
from lighthouse_proto.errors import FAILURE_CLASS_KEY, FailureClass, Reason

__all__ = [
    "CircuitOpen",
    "Corruption",
    "DeadlineExceeded",
    "EventIdConflict",
    "EventNotFound",
    "FailureClass",
    "Internal",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "StorageFull",
    "StoreError",
    "StreamNotFound",
    "Unauthenticated",
    "Unavailable",
    "WrongExpectedRevision",
    "handle_rpc_error",
]


class StoreError(Exception):
    failure_class: FailureClass = FailureClass.HUMAN_INTERVENTION

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.code = code
        fc = self.metadata.get(FAILURE_CLASS_KEY, "")
        if fc in FailureClass._value2member_map_:
            self.failure_class = FailureClass(fc)

    @property
    def retryable(self) -> bool:
        return self.failure_class is FailureClass.RECOVERABLE


class InvalidRequest(StoreError):
    pass


class WrongExpectedRevision(StoreError):
    @property
    def stream(self) -> str:
        return self.metadata.get("stream", "")

    @property
    def expected(self) -> str:
        return self.metadata.get("expected", "")

    @property
    def actual(self) -> int | None:
        """The stream's actual last revision; None when it does not exist."""
        raw = self.metadata.get("actual", "")
        return int(raw) if raw.isdigit() else None


class EventIdConflict(StoreError):
    pass


class NotFound(StoreError):
    pass


class StreamNotFound(NotFound):
    pass


class EventNotFound(NotFound):
    pass


class PermissionDenied(StoreError):
    """The daemon knows the caller, and no role of its allows the call."""


class Unauthenticated(PermissionDenied):
    """No credentials, or a token or certificate the daemon does not know."""


class Unavailable(StoreError):
    failure_class = FailureClass.RECOVERABLE


class CircuitOpen(Unavailable):
    """The client's circuit breaker is open: the daemon could not be reached by
    too many calls in a row, so this one was not sent. ``retry_after`` is how
    long until the breaker lets a probe through (None: a probe is in flight)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after  # seconds


class Overloaded(StoreError):
    failure_class = FailureClass.RECOVERABLE

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after  # seconds, from the server's RetryInfo


class StorageFull(StoreError):
    """The daemon's storage cannot take appends now: its data volume or LMDB
    map is nearly full. Recoverable: appends are taken again by themselves
    once an operator frees space, so the client retries with back-off, no
    sooner than ``retry_after`` (the server's RetryInfo). Reads still work.
    (A daemon from before disk-pressure handling marks it restart-required
    in its details, which then decides.)"""

    failure_class = FailureClass.RECOVERABLE

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after  # seconds, from the server's RetryInfo


class DeadlineExceeded(StoreError):
    failure_class = FailureClass.RECOVERABLE


class Corruption(StoreError):
    failure_class = FailureClass.RESTART_REQUIRED

    @property
    def position(self) -> int | None:
        raw = self.metadata.get("position", "")
        return int(raw) if raw.isdigit() else None


class Internal(StoreError):
    pass


_BY_REASON: dict[str, type[StoreError]] = {
    Reason.WRONG_EXPECTED_REVISION: WrongExpectedRevision,
    Reason.EVENT_ID_CONFLICT: EventIdConflict,
    Reason.STREAM_NOT_FOUND: StreamNotFound,
    Reason.EVENT_NOT_FOUND: EventNotFound,
    Reason.OVERLOADED: Overloaded,
    Reason.STORAGE_FULL: StorageFull,
    Reason.SHUTTING_DOWN: Unavailable,
    Reason.DEGRADED: Unavailable,
    Reason.CORRUPTION: Corruption,
    Reason.INVALID_ARGUMENT: InvalidRequest,
}

_BY_CODE: dict[grpc.StatusCode, type[StoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: WrongExpectedRevision,
    grpc.StatusCode.ALREADY_EXISTS: EventIdConflict,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.ABORTED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.DATA_LOSS: Corruption,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNKNOWN: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Internal,
    grpc.StatusCode.CANCELLED: Unavailable,
}


def handle_rpc_error(error: grpc.RpcError) -> StoreError:
    """The StoreError for a failed call (return it; the caller raises)."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or code.name
    trailers = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    details = _rpc_status.parse(trailers)
    cls = _BY_REASON.get(details.reason) or _BY_CODE.get(code, StoreError)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and not details.reason and (
        "larger than max" in message
    ):
        # gRPC's own message-size limit: the request can never succeed as it is.
        cls = InvalidRequest
    if code is grpc.StatusCode.INTERNAL and not details.reason:
        # The daemon's own INTERNAL errors carry an ErrorInfo; one without is
        # gRPC's transport failing under the call (e.g. a stream cut short).
        cls = Unavailable
    if code is grpc.StatusCode.FAILED_PRECONDITION and details.reason not in (
        "", Reason.WRONG_EXPECTED_REVISION
    ):
        cls = StoreError  # some other precondition; keep the code, not the meaning
    kw: dict[str, Any] = {"reason": details.reason, "metadata": details.metadata, "code": code}
    if cls is Overloaded or cls is StorageFull:
        return cls(message, retry_after=details.retry_after, **kw)
    return cls(message, **kw)
