"""``validation.append_command``: the whole-append fast path and the
one-event-at-a-time path accept the same appends and build the same events
(pure logic; the daemon-level checks are in test_validation.py)."""

from __future__ import annotations

import uuid

import pytest

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import validation
from lighthouse_store.config import Limits
from lighthouse_store.errors import InvalidArgument

LIMITS = Limits()


def request(
    *ids: str, event_type: str = "Placed", content_type: str = "", **metadata: str
) -> pb.AppendRequest:
    return pb.AppendRequest(
        stream="orders",
        events=[
            pb.ProposedEvent(
                event_id=i,
                event_type=event_type,
                data=b"d",
                content_type=content_type,
                metadata=metadata,
            )
            for i in ids
        ],
    )


BIG = validation.WIRE_SCHEMA_MAX_BYTES + 1  # a wire size that skips the views


def fast(
    req: pb.AppendRequest, limits: Limits = LIMITS, wire_size: int = 0
) -> tuple[list[bytes], list[bytes]] | None:
    """What the fast path makes of a request (None: it leaves it to the careful
    path); ``wire_size`` BIG takes it without the wire schemas."""
    req.DiscardUnknownFields()
    return validation._checked_at_once(req, len(req.events), limits, wire_size)


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"correlation_id": "c-1"},
        {"content_type": "application/json"},
        {"event_type": "NeverSeenBefore", "content_type": "text/plain", "source": "tests"},
        {"event_type": "~\u00a0\u00e9"},  # around the control ranges: printable, accepted
    ],
)
@pytest.mark.parametrize("wire_size", [0, BIG])
def test_both_paths_build_the_same_events(labels: dict[str, str], wire_size: int) -> None:
    batch = ids(20)
    checked = fast(request(*batch, **labels), wire_size=wire_size)
    assert checked is not None
    careful = validation._checked_one_by_one(request(*batch, **labels).events, LIMITS)
    assert checked == careful
    command = validation.append_command(request(*batch, **labels), LIMITS, wire_size)
    assert (list(command.event_ids), list(command.proposed)) == careful
    assert list(command.event_ids) == [uuid.UUID(i).bytes for i in batch]
    assert [pb.ProposedEvent.FromString(p).event_id for p in command.proposed] == batch
    assert command.size == sum(map(len, command.proposed))


@pytest.mark.parametrize("wire_size", [0, BIG])
def test_events_with_different_labels_are_each_checked(wire_size: int) -> None:
    req = request(*ids(4), correlation_id="c-1")
    req.events[1].event_type = "Other"
    req.events[2].metadata["source"] = "s"
    req.events[3].content_type = "text/plain"
    assert fast(req, wire_size=wire_size) is not None
    req.events[3].event_type = "Bad\x01"  # one bad label among good ones
    assert fast(req, wire_size=wire_size) is None
    req.events[3].event_type = "Good"
    req.events[2].metadata[""] = "empty key"  # one bad metadata map among good ones
    assert fast(req, wire_size=wire_size) is None
    req.events[2].metadata.clear()
    req.events[3].event_type = "Bad\x01"
    with pytest.raises(InvalidArgument, match=r"events\[3\]\.event_type: must not contain control"):
        validation.append_command(req, LIMITS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"event_type": ""}, r"events\[0\]\.event_type: must not be empty"),
        ({"event_type": "x" * 256}, r"events\[0\]\.event_type: must be at most 255"),
        ({"content_type": "a\nb"}, r"events\[0\]\.content_type: must not contain control"),
        # C1 controls (U+0080-U+009F) like C0: NEL, CSI, the first and the last.
        ({"event_type": "a\x85b"}, r"events\[0\]\.event_type: must not contain control"),
        ({"event_type": "\x9b31m"}, r"events\[0\]\.event_type: must not contain control"),
        ({"event_type": "a\x80"}, r"events\[0\]\.event_type: must not contain control"),
        ({"event_type": "a\x9f"}, r"events\[0\]\.event_type: must not contain control"),
        ({"content_type": "text/\x85"}, r"events\[0\]\.content_type: must not contain control"),
        ({"": "empty key"}, r"events\[0\]\.metadata: keys must not be empty"),
    ],
)
def test_bad_labels_go_one_event_at_a_time(labels: dict[str, str], message: str) -> None:
    assert fast(request(*ids(3), **labels)) is None
    assert fast(request(*ids(3), **labels), wire_size=BIG) is None
    with pytest.raises(InvalidArgument, match=message):
        validation.append_command(request(*ids(3), **labels), LIMITS)


A, B = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.mark.parametrize(
    "batch",
    [
        [A.upper()],  # canonicalized by the slow path
        [A, "not-a-uuid"],
        ["00000000-0000-0000-0000-000000000000"],
        [A, A],
        [A[:-1]],
        ["", A],  # an empty id next to a good one
        [A[:10], A[10:] + B, ""],  # the right characters cut in the wrong places
        [A[:10], A[10:] + B],
        [A + "\n" + B],
        [A + "0"],  # 37 characters: the head of a longer id
    ],
)
def test_anything_unusual_goes_one_event_at_a_time(batch: list[str]) -> None:
    assert fast(request(*batch)) is None
    assert fast(request(*batch), wire_size=BIG) is None
    if batch[0] != A.upper():  # and the careful path names what is wrong
        with pytest.raises(InvalidArgument, match=r"events\[\d\]\.event_id"):
            validation.append_command(request(*batch), LIMITS)


@pytest.mark.parametrize("wire_size", [0, BIG])
def test_unknown_fields_are_not_stored(wire_size: int) -> None:
    """A field this server does not know (here RecordedEvent's ``stream``,
    field 6, sent inside a ProposedEvent) is dropped before the fast path
    takes the event's bytes."""
    event = pb.ProposedEvent(event_id=A, event_type="Placed", data=b"d")
    smuggled = event.SerializeToString() + b"\x32\x04evil"
    raw = b"\x0a\x06orders" + b"\x32" + bytes([len(smuggled)]) + smuggled
    command = validation.append_command(pb.AppendRequest.FromString(raw), LIMITS, wire_size)
    assert command.proposed == (event.SerializeToString(),)


def test_uppercase_ids_are_stored_lowercase() -> None:
    upper = [str(uuid.uuid4()).upper() for _ in range(3)]
    command = validation.append_command(request(*upper), LIMITS)
    stored = [pb.ProposedEvent.FromString(p).event_id for p in command.proposed]
    assert stored == [i.lower() for i in upper]


def test_data_over_the_limit_is_named_whichever_path() -> None:
    limits = Limits(max_event_data_bytes=100)
    req = request(*ids(3))
    req.events[2].data = bytes(101)
    assert fast(request(*ids(3)), limits) is not None
    assert fast(request(*ids(3)), limits, BIG) is not None
    assert fast(req, limits) is None and fast(req, limits, BIG) is None
    with pytest.raises(InvalidArgument, match=r"events\[2\]\.data: 101 bytes"):
        validation.append_command(req, limits)
