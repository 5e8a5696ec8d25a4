"""``validation.append_command``: the whole-append fast path and the
one-event-at-a-time path accept the same appends and build the same events
(pure logic; the daemon-level checks are in test_validation.py)."""

from __future__ import annotations

import uuid

import pytest

from lighthouse_client import pb
from lighthouse_store import validation
from lighthouse_store.config import Limits
from lighthouse_store.errors import InvalidArgument

LIMITS = Limits()


@pytest.fixture(autouse=True)
def _known_labels() -> None:
    """The fast path takes only labels seen valid before: make "Placed" one,
    so that what these tests send is a fast-path candidate."""
    validation.append_command(request(str(uuid.uuid4())), LIMITS)
    assert validation._checked_at_once(request(str(uuid.uuid4())).events, LIMITS)


def request(*ids: str, event_type: str = "Placed", **metadata: str) -> pb.AppendRequest:
    return pb.AppendRequest(
        stream="orders",
        events=[
            pb.ProposedEvent(event_id=i, event_type=event_type, data=b"d", metadata=metadata)
            for i in ids
        ],
    )


def ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.mark.parametrize("metadata", [{}, {"correlation_id": "c-1"}])
def test_both_paths_build_the_same_events(metadata: dict[str, str]) -> None:
    batch = ids(20)
    assert validation._checked_at_once(request(*batch, **metadata).events, LIMITS)
    fast = validation.append_command(request(*batch, **metadata), LIMITS).events
    slow = validation._checked_one_by_one(request(*batch, **metadata).events, LIMITS)
    assert fast == slow
    assert [e.event_id for e in fast] == [uuid.UUID(i).bytes for i in batch]
    assert [pb.ProposedEvent.FromString(e.proposed).event_id for e in fast] == batch


def test_the_fast_path_takes_a_clean_append_once_its_labels_are_known() -> None:
    validation.append_command(request(*ids(2), event_type="NeverSeenBefore1"), LIMITS)
    assert validation._checked_at_once(
        request(*ids(3), event_type="NeverSeenBefore1").events, LIMITS
    )


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
    ],
)
def test_anything_unusual_goes_one_event_at_a_time(batch: list[str]) -> None:
    assert validation._checked_at_once(request(*batch).events, LIMITS) == ()
    if batch[0] != A.upper():  # and the careful path names what is wrong
        with pytest.raises(InvalidArgument, match=r"events\[\d\]\.event_id"):
            validation.append_command(request(*batch), LIMITS)


def test_uppercase_ids_are_stored_lowercase() -> None:
    upper = [str(uuid.uuid4()).upper() for _ in range(3)]
    events = validation.append_command(request(*upper), LIMITS).events
    stored = [pb.ProposedEvent.FromString(e.proposed).event_id for e in events]
    assert stored == [i.lower() for i in upper]


def test_data_over_the_limit_is_named_whichever_path() -> None:
    limits = Limits(max_event_data_bytes=100)
    req = request(*ids(3))
    req.events[2].data = bytes(101)
    with pytest.raises(InvalidArgument, match=r"events\[2\]\.data: 101 bytes"):
        validation.append_command(req, limits)
