"""``wire_schemas.py``: the daemon's private schemas for AppendRequest bytes
follow ``store.proto`` (pure logic)."""

from __future__ import annotations

from typing import Any

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import wire_schemas


def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool]]:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}


def test_the_schemas_have_the_numbers_and_wire_types_of_store_proto() -> None:
    request = pb.AppendRequest.DESCRIPTOR.fields_by_name["events"]
    (events,) = wire_schemas.AppendEvents.DESCRIPTOR.fields
    assert (events.number, events.is_repeated) == (request.number, True)
    assert events.type == events.TYPE_BYTES  # same wire type as a message field
    labels = wire_schemas.AppendLabels.DESCRIPTOR.fields_by_name["events"]
    assert (labels.number, labels.is_repeated) == (request.number, True)
    proposed = _fields(pb.ProposedEvent.DESCRIPTOR)
    labels_fields = _fields(wire_schemas.EventLabels.DESCRIPTOR)
    for name, spec in labels_fields.items():
        assert proposed[name] == spec, name
    # Every ProposedEvent field is either checked through these schemas (its
    # labels) or read by validation itself: the id from the head of the
    # event's bytes (field 1, a string, so tag 0x0a), the data by length.
    # A new field needs a look at validation._checked_at_once.
    assert set(proposed) == {"event_id", "data"} | set(labels_fields)
    event_id = pb.ProposedEvent.DESCRIPTOR.fields_by_name["event_id"]
    assert (event_id.number, event_id.type) == (1, event_id.TYPE_STRING)
    entry = wire_schemas.EventLabels.DESCRIPTOR.fields_by_name["metadata"].message_type
    assert entry.GetOptions().map_entry
    assert _fields(entry) == _fields(
        pb.ProposedEvent.DESCRIPTOR.fields_by_name["metadata"].message_type
    )


def test_event_bytes_and_distinct_labels() -> None:
    events = [
        pb.ProposedEvent(event_id=f"id-{i}", event_type="A" if i % 2 else "B", data=bytes(i))
        for i in range(5)
    ]
    raw = pb.AppendRequest(stream="s", events=events).SerializeToString()
    assert wire_schemas.event_bytes(raw) == [e.SerializeToString() for e in events]
    distinct = wire_schemas.distinct_labels(raw)
    assert sorted(d.event_type for d in distinct) == ["A", "B"]
    tagged = pb.AppendRequest(
        stream="s",
        events=[pb.ProposedEvent(event_type="A", content_type="c", metadata={"k": "v"})],
    ).SerializeToString()
    (one,) = wire_schemas.distinct_labels(tagged)
    assert (one.event_type, one.content_type, dict(one.metadata)) == ("A", "c", {"k": "v"})
