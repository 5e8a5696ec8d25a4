"""Decode ``grpc-status-details-bin`` without googleapis-common-protos.

The client depends only on grpcio, protobuf and tenacity, so the three
``google.rpc`` messages it reads (Status, ErrorInfo, RetryInfo) are declared
here, wire-compatible with the originals, in a private descriptor pool (no
clash with googleapis-common-protos when both are loaded in one process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory

from lighthouse_proto.errors import DETAILS_KEY

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> tuple[Any, Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    for dep in (any_pb2, duration_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    f = descriptor_pb2.FileDescriptorProto(
        name="lighthouse_client/google_rpc_details.proto",
        package="google.rpc",
        syntax="proto3",
        dependency=["google/protobuf/any.proto", "google/protobuf/duration.proto"],
    )
    status = f.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=_F.TYPE_INT32, label=_F.LABEL_OPTIONAL)
    status.field.add(name="message", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    status.field.add(name="details", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                     type_name=".google.protobuf.Any")
    info = f.message_type.add(name="ErrorInfo")
    info.field.add(name="reason", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    info.field.add(name="domain", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    info.field.add(name="metadata", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                   type_name=".google.rpc.ErrorInfo.MetadataEntry")
    entry = info.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    retry = f.message_type.add(name="RetryInfo")
    retry.field.add(name="retry_delay", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                    type_name=".google.protobuf.Duration")
    pool.Add(f)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"google.rpc.{name}"))
        for name in ("Status", "ErrorInfo", "RetryInfo")
    )


Status, ErrorInfo, RetryInfo = _build()


@dataclass(frozen=True, slots=True)
class Details:
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] | None = None
    retry_after: float | None = None  # seconds


def parse(trailing_metadata: Sequence[tuple[str, str | bytes]] | None) -> Details:
    """The ErrorInfo/RetryInfo in a call's trailers (empty Details if none)."""
    raw = next((v for k, v in trailing_metadata or () if k == DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return Details()
    try:
        status = Status.FromString(raw)
    except Exception:  # a malformed trailer must not hide the error itself
        return Details()
    reason, domain, metadata, retry_after = "", "", None, None
    for detail in status.details:
        name = detail.type_url.rsplit("/", 1)[-1]
        if name == "google.rpc.ErrorInfo":
            info = ErrorInfo.FromString(detail.value)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif name == "google.rpc.RetryInfo":
            delay = RetryInfo.FromString(detail.value).retry_delay
            retry_after = delay.seconds + delay.nanos / 1e9
    return Details(reason, domain, metadata, retry_after)
