"""Protobuf <-> public dataclasses; the only module that builds requests.

(Events in responses become ``RecordedEvent`` values through
``_types.recorded_events``, which decodes each one's fields on first access.)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf import empty_pb2, timestamp_pb2

from lighthouse_client._types import (
    ExpectedRevision,
    Filter,
    Limits,
    NewEvent,
    StoreInfo,
    StreamState,
)
from lighthouse_proto.v1 import store_pb2 as pb

_DURABILITY = {pb.DURABILITY_FSYNC: "fsync", pb.DURABILITY_ASYNC: "async"}


def append_request(
    stream: str, events: Sequence[NewEvent], expected: ExpectedRevision
) -> pb.AppendRequest:
    req = pb.AppendRequest(
        stream=stream,
        events=[
            pb.ProposedEvent(
                event_id=e.event_id,
                event_type=e.event_type,
                data=e.data,
                content_type=e.content_type,
                metadata=dict(e.metadata),
            )
            for e in events
        ],
    )
    if isinstance(expected, bool) or not isinstance(expected, (int, StreamState)):
        raise TypeError("expected_revision must be ANY, NO_STREAM, STREAM_EXISTS or an int")
    if expected is StreamState.NO_STREAM:
        req.no_stream.CopyFrom(empty_pb2.Empty())
    elif expected is StreamState.STREAM_EXISTS:
        req.stream_exists.CopyFrom(empty_pb2.Empty())
    elif isinstance(expected, int):
        req.exact = expected
    return req


def event_filter(f: Filter | None) -> pb.EventFilter | None:
    if f is None:
        return None
    return pb.EventFilter(
        stream_prefixes=list(f.stream_prefixes),
        streams=list(f.streams),
        event_types=list(f.event_types),
        correlation_id=f.correlation_id,
    )


def timestamp(t: datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def time_ns(t: datetime | None) -> int | None:
    """Unix nanoseconds of ``t`` exactly as the daemon reads it from
    :func:`timestamp` (a naive datetime is UTC there), for cached reads."""
    ts = timestamp(t)
    return None if ts is None else ts.seconds * 1_000_000_000 + ts.nanos


def store_info(r: pb.GetInfoResponse) -> StoreInfo:
    lim = r.limits
    return StoreInfo(
        head_position=r.head_position,
        server_version=r.server_version,
        durability=_DURABILITY.get(r.durability, "unknown"),
        limits=Limits(
            max_event_data_bytes=lim.max_event_data_bytes,
            max_events_per_append=lim.max_events_per_append,
            max_append_bytes=lim.max_append_bytes,
            max_metadata_entries=lim.max_metadata_entries,
            max_metadata_bytes=lim.max_metadata_bytes,
        ),
        subscriber_count=r.subscriber_count,
    )
