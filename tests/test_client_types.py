"""The public values (_types.py): a RecordedEvent read from a page of the wire
is the same value as one built from its fields, and decodes only when read."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
from typing import Any

import pytest

from lighthouse_client import RecordedEvent
from lighthouse_client._types import recorded_events
from lighthouse_proto.v1 import store_pb2 as pb

VALUES: dict[str, Any] = {
    "event_id": "0190f0c4-6f1e-7c3a-9b1d-2f4e5a6b7c8d",
    "event_type": "OrderPlaced",
    "data": b'{"total": 42}',
    "content_type": "application/json",
    "metadata": {"correlation_id": "req-1", "k\u00e9y": "v"},
    "stream": "order-1",
    "revision": 3,
    "position": 17,
    "recorded_at_ns": 1_795_000_000_123_456_789,
    "checksum": 0xDEADBEEF,
}


def page() -> pb.ReadResponse:
    """A page of two events, the first with VALUES."""
    first = pb.RecordedEvent(**{k: v for k, v in VALUES.items() if k != "recorded_at_ns"})
    first.recorded_at.seconds, first.recorded_at.nanos = divmod(
        VALUES["recorded_at_ns"], 1_000_000_000
    )
    return pb.ReadResponse(events=[first, pb.RecordedEvent(event_id="other", position=18)])


def lazy() -> RecordedEvent:
    return recorded_events(page().events)[0]


def test_an_event_from_a_page_is_the_value_built_from_its_fields() -> None:
    built = RecordedEvent(**VALUES)
    assert lazy() == built and built == lazy()
    assert lazy() != recorded_events(page().events)[1]
    event = lazy()  # (a map's order is its own: the same for the same map)
    assert repr(event) == repr(RecordedEvent(**{**VALUES, "metadata": event.metadata}))
    assert dataclasses.asdict(lazy()) == VALUES
    assert dataclasses.replace(lazy(), position=99) == dataclasses.replace(built, position=99)
    assert lazy().recorded_at == built.recorded_at
    for copied in (pickle.loads(pickle.dumps(lazy())), copy.copy(lazy()), copy.deepcopy(lazy())):
        assert copied == built


def test_the_first_field_read_decodes_them_all_and_lets_go_of_the_page() -> None:
    wire = page().events
    event = recorded_events(wire)[0]
    assert any(ref is wire for ref in gc.get_referents(event))
    assert event.position == 17
    assert not any(ref is wire for ref in gc.get_referents(event))
    assert [getattr(event, name) for name in VALUES] == list(VALUES.values())


def test_metadata_is_a_copy_that_answers_a_missing_key_with_key_error() -> None:
    wire = page().events
    event = recorded_events(wire)[0]
    assert type(event.metadata) is dict and event.metadata == VALUES["metadata"]
    with pytest.raises(KeyError):
        event.metadata["missing"]
    assert dict(wire[0].metadata) == VALUES["metadata"]


def test_an_event_is_frozen_and_has_only_its_fields() -> None:
    for event in (lazy(), RecordedEvent(**VALUES)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.position = 1  # type: ignore[misc]
        with pytest.raises(AttributeError, match="no attribute 'postion'"):
            event.postion  # type: ignore[attr-defined]  # noqa: B018
    assert [f.name for f in dataclasses.fields(RecordedEvent)] == list(VALUES)
