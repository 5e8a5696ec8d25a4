"""Domain errors: the one exception tree the daemon raises.

Every error a client can see belongs to one failure class (SPEC §4), which
tells the client what to do. ``status.py`` maps these to gRPC status codes and
error details in one place; nothing else in the daemon knows about gRPC codes.
"""

from __future__ import annotations

from lighthouse_proto.errors import FailureClass as FailureClass  # the daemon names it from here
from lighthouse_proto.errors import Reason


class StoreError(Exception):
    """Base of every domain error. ``reason`` is a stable UPPER_SNAKE code."""

    reason: str = Reason.STORE_ERROR
    failure_class = FailureClass.HUMAN_INTERVENTION

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata


class InvalidArgument(StoreError):
    reason: str = Reason.INVALID_ARGUMENT


class WrongExpectedRevision(StoreError):
    reason: str = Reason.WRONG_EXPECTED_REVISION

    def __init__(self, stream: str, expected: str, actual: str) -> None:
        super().__init__(
            f"stream {stream!r}: expected revision {expected}, actual {actual}",
            stream=stream,
            expected=expected,
            actual=actual,
        )


class EventIdConflict(StoreError):
    reason: str = Reason.EVENT_ID_CONFLICT


class StreamNotFound(StoreError):
    reason: str = Reason.STREAM_NOT_FOUND

    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} not found", stream=stream)


class EventNotFound(StoreError):
    reason: str = Reason.EVENT_NOT_FOUND

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} not found", event_id=event_id)


class Overloaded(StoreError):
    """Too much queued work; retry after ``retry_after_ms``."""

    reason: str = Reason.OVERLOADED
    failure_class = FailureClass.RECOVERABLE

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message, retry_after_ms=str(retry_after_ms))
        self.retry_after_ms = retry_after_ms


class RateLimited(Overloaded):
    """A principal's token bucket is empty (``ratelimit``); retry after
    ``retry_after_ms``, when the bucket holds enough again."""

    reason: str = Reason.RATE_LIMITED


class ResourceCap(Overloaded):
    """A cap on what one client may hold at once (streaming calls, bytes held
    for them) is reached; retry when one of its calls has ended."""

    reason: str = Reason.RESOURCE_CAP


class Unauthenticated(StoreError):
    """No credentials, or credentials the daemon does not know."""

    reason: str = Reason.UNAUTHENTICATED


class PermissionDenied(StoreError):
    """The principal is known but holds no role that allows this call."""

    reason: str = Reason.PERMISSION_DENIED


class StorageFull(StoreError):
    """Storage cannot take the append now; nothing of it was written: the
    data volume or the LMDB map is past ``--disk-block-ratio`` (until it is
    below ``--disk-resume-ratio`` again), a commit met a full disk (ENOSPC,
    EDQUOT), or the map is at ``--max-map-size`` (``space.py``). Recoverable
    (SPEC §4, "disk filling"): appends are taken again by themselves once an
    operator frees space or raises the limit; clients retry after
    ``retry_after_ms``. Reads go on meanwhile."""

    reason: str = Reason.STORAGE_FULL
    failure_class = FailureClass.RECOVERABLE

    def __init__(self, message: str, retry_after_ms: int = 1_000, **metadata: str) -> None:
        super().__init__(message, retry_after_ms=str(retry_after_ms), **metadata)
        self.retry_after_ms = retry_after_ms


class MapFull(StorageFull):
    """LMDB found its map full in a commit (``lmdb_txn.py``): the store grows
    the map and commits again, up to ``--max-map-size`` (``lmdb_store.py``)."""


class SpacePressure(StorageFull):
    """A :class:`StorageFull` from the marks (``space.py``): the guard's own
    state says when it ends, so it does not hold writes blocked until a
    commit succeeds, as a refused commit does (``metrics.py``)."""


class ShuttingDown(StoreError):
    reason: str = Reason.SHUTTING_DOWN
    failure_class = FailureClass.RECOVERABLE


class Corruption(StoreError):
    """Stored data is not what was written: a record failed its checksum, the
    log or an index contradicts itself, or LMDB found a damaged page.
    ``position`` is the log position concerned, None when no one position is
    (a damaged B-tree page). Raised through ``corruption.found``, which
    reports it."""

    reason: str = Reason.CORRUPTION
    failure_class = FailureClass.RESTART_REQUIRED

    def __init__(self, message: str, position: int | None) -> None:
        if position is None:
            super().__init__(message)
        else:
            super().__init__(message, position=str(position))
        self.position = position


class Degraded(StoreError):
    """The store takes no appends for now (read-only); reads and
    subscriptions go on: the degradation level is ``degraded``
    (``degradation.py``: a trigger, corruption found, or an operator)."""

    reason: str = Reason.DEGRADED
    failure_class = FailureClass.RECOVERABLE

    def __init__(self, message: str, retry_after_ms: int, **metadata: str) -> None:
        super().__init__(message, retry_after_ms=str(retry_after_ms), **metadata)
        self.retry_after_ms = retry_after_ms


class StoreDamaged(StoreError):
    """The data dir's files fail a start-up check that LMDB itself cannot
    make safely (a ``data.mdb`` shorter than its last page, a missing one
    beside a known store): refused before LMDB maps the file (``integrity.py``).
    Raised at start and by the offline tools, never an RPC's answer."""

    reason: str = Reason.CORRUPTION
    failure_class = FailureClass.RESTART_REQUIRED


class StorageFailure(StoreError):
    """LMDB failed in a way the process cannot undo."""

    reason: str = Reason.STORAGE_FAILURE
    failure_class = FailureClass.RESTART_REQUIRED


class DataDirLocked(StoreError):
    """Another daemon owns the data directory (raised at startup only)."""

    reason: str = Reason.DATA_DIR_LOCKED


class Internal(StoreError):
    """An unexpected failure inside the daemon (a bug); details are only logged."""

    reason: str = Reason.INTERNAL
