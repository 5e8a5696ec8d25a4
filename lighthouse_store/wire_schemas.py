"""Alternate protobuf schemas for the wire bytes of an AppendRequest, in which
each event is plain bytes (or only its labels), so that whole-append steps run
in protobuf's C code instead of one Python step per event.

Protobuf's wire format lets one message's bytes be parsed with a different
schema whose fields have the same numbers and wire types. ``AppendRequest``'s
``repeated ProposedEvent events = 6`` has the wire type of ``repeated bytes``,
so parsing a serialized AppendRequest as

    message AppendEvents { repeated bytes events = 6; }

gives every event's own serialized bytes in one call, and parsing it as

    message AppendLabels { repeated EventLabels events = 6; }
    message EventLabels {
      string event_type = 2; string content_type = 4; map<string, string> metadata = 5;
    }

and serializing that without its unknown fields (the id and the data) gives
each event's labels as bytes, so that the distinct ones can be found with a
set. Each parse copies the request, so validation uses them only for appends
up to ``validation.WIRE_SCHEMA_MAX_BYTES``. These schemas are private to the daemon,
built here from descriptors (no .proto file, nothing on the wire changes), and
they must follow ``store.proto``: ``tests/test_wire_schemas.py`` checks them
against it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_PACKAGE = "lighthouse.store.wire_schemas"
_F = descriptor_pb2.FieldDescriptorProto


def _field(message: Any, name: str, number: int, kind: int, of: str = "") -> None:
    """Add a field: ``kind`` a TYPE_* of FieldDescriptorProto; ``of`` a
    message type in this package, which makes the field repeated."""
    if of:
        message.field.add(
            name=name,
            number=number,
            type=kind,
            type_name=f".{_PACKAGE}.{of}",
            label=_F.LABEL_REPEATED,
        )
    else:
        message.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="lighthouse_store/wire_schemas.proto", package=_PACKAGE, syntax="proto3"
    )
    events = fdp.message_type.add(name="AppendEvents")
    events.field.add(name="events", number=6, type=_F.TYPE_BYTES, label=_F.LABEL_REPEATED)
    labels = fdp.message_type.add(name="EventLabels")
    _field(labels, "event_type", 2, _F.TYPE_STRING)
    _field(labels, "content_type", 4, _F.TYPE_STRING)
    entry = labels.nested_type.add(name="MetadataEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_STRING)
    _field(labels, "metadata", 5, _F.TYPE_MESSAGE, of="EventLabels.MetadataEntry")
    append_labels = fdp.message_type.add(name="AppendLabels")
    _field(append_labels, "events", 6, _F.TYPE_MESSAGE, of="EventLabels")
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))


AppendEvents: Any = _message("AppendEvents")
EventLabels: Any = _message("EventLabels")
AppendLabels: Any = _message("AppendLabels")


def event_bytes(request: bytes) -> list[bytes]:
    """Each event of a serialized AppendRequest, as its own serialized bytes."""
    return list(AppendEvents.FromString(request).events)


def distinct_labels(request: bytes) -> list[Any]:
    """The distinct (event_type, content_type, metadata) of a serialized
    AppendRequest's events, as EventLabels messages: one when every event has
    the same labels and no metadata of its own, one per event at worst."""
    labels = AppendLabels.FromString(request)
    labels.DiscardUnknownFields()
    distinct = set(AppendEvents.FromString(labels.SerializeToString()).events)
    return [EventLabels.FromString(b) for b in distinct]
