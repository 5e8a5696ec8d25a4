"""The one mapping from domain errors to gRPC status (server side).

Every error carries a ``google.rpc.Status`` in the trailing metadata
(``grpc-status-details-bin``) with a ``google.rpc.ErrorInfo``: ``reason`` (a
stable code), ``domain`` ``lighthouse.store`` and metadata that always holds
``failure_class`` (recoverable / human_intervention / restart_required,
SPEC §4) plus the error's own fields (``expected``, ``actual``, ...).
Overload, a read-only (degraded) store and full storage add a
``google.rpc.RetryInfo``.
Messages never carry stack traces or file paths: unexpected exceptions
become INTERNAL with an incident id that is also in the server log.

Each failed request is logged once (``servicer._abort``), at the level
:func:`log_level` gives: ``error`` for the server's own failures (INTERNAL,
DATA_LOSS, and anything that needs a restart: a storage failure), ``info``
for UNAVAILABLE while the store drains or is read-only
(expected, and said once in the log already; clients retry), ``warning``
for the rest, which the client caused or can retry (bad input, a wrong
expected revision, not found, overload, full storage).
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from lighthouse_proto.errors import DETAILS_KEY, DOMAIN, FAILURE_CLASS_KEY
from lighthouse_store import errors
from lighthouse_store.errors import StoreError

_CODES: dict[type[StoreError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.WrongExpectedRevision: grpc.StatusCode.FAILED_PRECONDITION,
    errors.EventIdConflict: grpc.StatusCode.ALREADY_EXISTS,
    errors.StreamNotFound: grpc.StatusCode.NOT_FOUND,
    errors.EventNotFound: grpc.StatusCode.NOT_FOUND,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.StorageFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    errors.Degraded: grpc.StatusCode.UNAVAILABLE,
    errors.Corruption: grpc.StatusCode.DATA_LOSS,
    errors.StorageFailure: grpc.StatusCode.INTERNAL,
    errors.DataDirLocked: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}

Trailers = tuple[tuple[str, bytes], ...]


def to_status(error: StoreError) -> tuple[grpc.StatusCode, str, Trailers]:
    """gRPC code, message and trailing metadata for a domain error."""
    code = next(
        (_CODES[cls] for cls in type(error).__mro__ if cls in _CODES), grpc.StatusCode.INTERNAL
    )
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=DOMAIN,
        metadata={FAILURE_CLASS_KEY: error.failure_class.value, **error.metadata},
    )
    status = status_pb2.Status(code=code.value[0], message=error.message)
    status.details.add().Pack(info)
    if isinstance(error, errors.Overloaded | errors.Degraded | errors.StorageFull):
        delay = Duration()
        delay.FromMilliseconds(error.retry_after_ms)
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return code, error.message, ((DETAILS_KEY, status.SerializeToString()),)


def internal(incident: str) -> errors.Internal:
    """The error for an unexpected exception: no internals, an id to find the log line."""
    return errors.Internal(f"internal error (incident {incident}); the server log has the details")


_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS})


def log_level(error: StoreError, code: grpc.StatusCode) -> int:
    """The level of the log line of a request that failed with ``error``."""
    if code in _SERVER_FAULTS or error.failure_class is errors.FailureClass.RESTART_REQUIRED:
        return logging.ERROR
    if isinstance(error, errors.ShuttingDown | errors.Degraded):
        return logging.INFO
    return logging.WARNING
