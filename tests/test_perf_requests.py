"""Pure logic of the perf harness's request builder (``perf/workloads.py``): no daemon."""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import workloads

from lighthouse_proto.v1 import store_pb2 as pb

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


def _ids(random_ids: bool, calls: int = 3, batch: int = 50) -> list[list[str]]:
    spec = workloads.Spec(
        "append", "127.0.0.1:1", 1.0, 10, events_per_call=batch, random_ids=random_ids
    )
    requests = workloads.Requests(spec, client_index=0)
    out = []
    for _ in range(calls):
        request = pb.AppendRequest.FromString(requests.next())
        assert len(request.events) == batch
        out.append([e.event_id for e in request.events])
    return out


def _raw(text: str) -> bytes:
    return uuid.UUID(text).bytes


def test_ordered_ids_count_up_and_are_valid_uuid4_text() -> None:
    flat = [i for call in _ids(random_ids=False) for i in call]
    assert all(_CANONICAL.match(i) for i in flat)
    assert len(set(flat)) == len(flat)
    assert [_raw(i) for i in flat] == sorted(_raw(i) for i in flat)


def test_only_the_ids_of_written_appends_are_kept() -> None:
    spec = workloads.Spec("append", "127.0.0.1:1", 1.0, 10, events_per_call=3)
    requests = workloads.Requests(spec, client_index=0)
    requests.keep_ids = True
    first = [e.event_id for e in pb.AppendRequest.FromString(requests.next()).events]
    requests.written()
    pb.AppendRequest.FromString(requests.next())  # this one failed: never written()
    third = [e.event_id for e in pb.AppendRequest.FromString(requests.next()).events]
    requests.written()
    assert requests.ids == first + third


def test_random_ids_are_unique_valid_and_not_in_key_order() -> None:
    calls = _ids(random_ids=True)
    flat = [i for call in calls for i in call]
    assert all(_CANONICAL.match(i) for i in flat)
    assert len(set(flat)) == len(flat)
    # Random leading bits: the index sees them scattered, not in order.
    assert [_raw(i) for i in flat] != sorted(_raw(i) for i in flat)
    assert len({i[:8] for i in flat}) > len(flat) // 2
    # The counter part still counts up, call after call.
    assert [i[24:] for i in flat] == sorted(i[24:] for i in flat)
