"""What every error the daemon answers says about itself, on the wire.

Each error carries a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer, holding a ``google.rpc.ErrorInfo`` with ``domain`` :data:`DOMAIN`, a
``reason`` from :class:`Reason`, and metadata that always has
:data:`FAILURE_CLASS_KEY`, so that a client knows whether to retry
without knowing every reason.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DETAILS_KEY", "DOMAIN", "FAILURE_CLASS_KEY", "FailureClass", "Reason"]

DOMAIN = "lighthouse.store"
DETAILS_KEY = "grpc-status-details-bin"
FAILURE_CLASS_KEY = "failure_class"


class FailureClass(StrEnum):
    """What a client does about an error."""

    RECOVERABLE = "recoverable"  # retry with backoff and jitter
    HUMAN_INTERVENTION = "human_intervention"  # do not retry; report
    RESTART_REQUIRED = "restart_required"  # stop using the node


class Reason(StrEnum):
    """``ErrorInfo.reason``: a stable code per kind of error."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    WRONG_EXPECTED_REVISION = "WRONG_EXPECTED_REVISION"
    EVENT_ID_CONFLICT = "EVENT_ID_CONFLICT"
    STREAM_NOT_FOUND = "STREAM_NOT_FOUND"
    EVENT_NOT_FOUND = "EVENT_NOT_FOUND"
    OVERLOADED = "OVERLOADED"
    STORAGE_FULL = "STORAGE_FULL"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    DEGRADED = "DEGRADED"
    CORRUPTION = "CORRUPTION"
    STORAGE_FAILURE = "STORAGE_FAILURE"
    DATA_DIR_LOCKED = "DATA_DIR_LOCKED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    RESOURCE_CAP = "RESOURCE_CAP"
    INTERNAL = "INTERNAL"
    STORE_ERROR = "STORE_ERROR"
