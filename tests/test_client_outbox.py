"""The append outbox (_outbox.py): real LMDB files in tmp_path, reopened to simulate restarts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from support import run_threads

from lighthouse_client._cache import ReadCache
from lighthouse_client._outbox import DeadLetter, Outbox, OutboxEntry
from lighthouse_client._types import ANY, NO_STREAM, STREAM_EXISTS, NewEvent, StreamState
from lighthouse_client.exceptions import Overloaded, StoreError


class Clock:
    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Outbox]:
    outbox = Outbox(tmp_path / "outbox", clock=Clock())
    yield outbox
    outbox.close()


def reopen(outbox: Outbox, path: Path) -> Outbox:
    outbox.close()
    return Outbox(path, clock=Clock(2_000_000_000.0))


def streams(entries: list[OutboxEntry]) -> list[str]:
    return [e.stream for e in entries]


def test_entries_come_back_in_seq_order_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path, clock=Clock())
    made = [box.enqueue(f"s-{i}", ANY, [NewEvent("E")]) for i in range(5)]
    assert [e.seq for e in made] == sorted({e.seq for e in made})
    assert box.pending() == made
    box = reopen(box, path)
    try:
        assert box.pending() == made
        assert len(box) == 5
        later = box.enqueue("s-5", ANY, [NewEvent("E")])
        assert later.seq > made[-1].seq
        assert streams(box.pending()) == [f"s-{i}" for i in range(6)]
    finally:
        box.close()


def test_seqs_are_never_reused_even_after_the_queue_empties(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path)
    first = box.enqueue("s", ANY, [NewEvent("E")])
    second = box.enqueue("s", ANY, [NewEvent("E")])
    box.remove(first.seq)
    box.remove(second.seq)
    assert len(box) == 0 and box.pending() == []
    box = reopen(box, path)
    try:
        assert box.enqueue("s", ANY, [NewEvent("E")]).seq > second.seq
    finally:
        box.close()


def test_remove_takes_out_just_that_entry(box: Outbox) -> None:
    a, b, c = (box.enqueue(s, ANY, [NewEvent("E")]) for s in "abc")
    box.remove(b.seq)
    assert box.pending() == [a, c]
    assert len(box) == 2
    box.remove(b.seq)  # already gone: ignored, as a repeated flush would
    box.remove(10_000)
    assert box.pending() == [a, c]
    assert box.dead_letters() == []


def test_dead_letter_moves_the_entry_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path, clock=Clock(100.0))
    a, b, c = (box.enqueue(s, ANY, [NewEvent("E")]) for s in "abc")
    dead = box.dead_letter(b.seq, "WrongExpectedRevision: expected 3, actual 7")
    assert dead == DeadLetter(b, "WrongExpectedRevision: expected 3, actual 7", 102.0)
    assert box.pending() == [a, c]
    assert box.dead_letters() == [dead]
    with pytest.raises(KeyError):
        box.dead_letter(b.seq, "twice")
    box = reopen(box, path)
    try:
        assert box.pending() == [a, c]
        assert box.dead_letters() == [dead]
        assert len(box) == 2
    finally:
        box.close()


def test_dead_letter_is_atomic_when_the_write_fails(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path, map_size=256 * 1024)
    entry = box.enqueue("s", ANY, [NewEvent("E", data=b"x" * 20_000)])
    filler = box.enqueue("s", ANY, [NewEvent("E", data=b"y" * 20_000)])
    try:
        with pytest.raises(Overloaded) as info:
            box.dead_letter(entry.seq, "r" * 400_000)  # the dead-letter record cannot fit
        assert info.value.reason == "OUTBOX_FULL"
        assert box.pending() == [entry, filler]  # still queued: nothing half-moved
        assert box.dead_letters() == []
        assert box.dead_letter(entry.seq, "short").entry == entry
        assert box.pending() == [filler]
    finally:
        box.close()


def test_every_field_round_trips_exactly(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path, clock=Clock(1_700_000_000.123456789))
    odd = 'caf\u00e9 \U0001f600 \ud800 \x00 "quoted" \\'  # non-ASCII, lone surrogate, NUL
    events = [
        NewEvent(
            "OrderPlaced",
            data=bytes(range(256)),
            content_type="application/octet-stream",
            metadata={"correlation_id": "c-1", "k\u00e9y": odd, "": ""},
            event_id="0190a6b8-5c3e-7d2f-9a4b-1234567890ab",
        ),
        NewEvent("Empty", data=b"", content_type="", metadata={}),
        NewEvent(odd, data=odd.encode("utf-8", "surrogatepass")),
    ]
    kinds: list[StreamState | int] = [ANY, NO_STREAM, STREAM_EXISTS, 0, 1, 2**63 - 1]
    made = [box.enqueue(f"stream-{i}", kind, events) for i, kind in enumerate(kinds)]
    box = reopen(box, path)
    try:
        back = box.pending()
        assert back == made
        for entry, kind in zip(back, kinds, strict=True):
            assert type(entry.expected) is type(kind) and entry.expected == kind
            assert entry.events == tuple(events)
            assert [e.event_id for e in entry.events] == [e.event_id for e in events]
            assert entry.queued_at == made[back.index(entry)].queued_at
        assert back[0].queued_at == 1_700_000_000.123456789 + 0.5
    finally:
        box.close()


def test_exact_revision_zero_is_not_confused_with_a_stream_state(box: Outbox) -> None:
    box.enqueue("a", 0, [NewEvent("E")])
    box.enqueue("b", NO_STREAM, [NewEvent("E")])
    got = [e.expected for e in box.pending()]
    assert got == [0, NO_STREAM]
    assert not isinstance(got[0], StreamState)


def test_a_thousand_entries_come_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path)
    made = [box.enqueue("s", i, [NewEvent("E", data=str(i).encode())]) for i in range(1000)]
    box = reopen(box, path)
    try:
        back = box.pending()
        assert back == made
        assert [e.expected for e in back] == list(range(1000))
        assert len(box) == 1000
    finally:
        box.close()


def test_concurrent_enqueues_get_distinct_increasing_seqs(box: Outbox) -> None:
    got: list[OutboxEntry] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        for i in range(25):
            entry = box.enqueue(f"t-{n}", i, [NewEvent("E")])
            with lock:
                got.append(entry)

    run_threads(work, 4, 240)
    seqs = [e.seq for e in got]
    assert len(set(seqs)) == 100
    assert box.pending() == sorted(got, key=lambda e: e.seq)
    for n in range(4):  # each thread's own entries keep their order
        assert [e.expected for e in box.pending() if e.stream == f"t-{n}"] == list(range(25))


def test_the_stored_form_is_deterministic_json(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path, clock=lambda: 5.0)
    event = NewEvent("E", data=b"\x01\x02", metadata={"b": "2", "a": "1"}, event_id="id-1")
    box.enqueue("s", STREAM_EXISTS, [event])
    box.close()
    env = lmdb.open(str(path), max_dbs=3, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = txn.get((1).to_bytes(8, "big"), db=env.open_db(b"queue", txn=txn))
    finally:
        env.close()
    assert raw == (
        b'{"events":[{"content_type":"application/json","data":"AQI=","event_id":"id-1",'
        b'"event_type":"E","metadata":{"a":"1","b":"2"}}],"expected":"stream_exists",'
        b'"queued_at":5.0,"stream":"s"}'
    )
    assert json.loads(raw)["expected"] == "stream_exists"


def test_a_full_outbox_raises_overloaded_and_keeps_what_it_had(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox", map_size=128 * 1024)
    try:
        kept = box.enqueue("s", ANY, [NewEvent("E")])
        with pytest.raises(Overloaded) as info:
            box.enqueue("s", ANY, [NewEvent("Big", data=bytes(512 * 1024))])
        assert info.value.retryable
        assert box.pending() == [kept]
        assert box.enqueue("s", ANY, [NewEvent("E")]).seq > kept.seq
    finally:
        box.close()


@pytest.mark.parametrize(
    ("expected", "events", "error"),
    [
        (ANY, [], ValueError),
        (-1, [NewEvent("E")], ValueError),
        (True, [NewEvent("E")], TypeError),
        ("any", [NewEvent("E")], TypeError),
    ],
)
def test_rejects_what_could_never_be_flushed(
    box: Outbox, expected: object, events: list[NewEvent], error: type[Exception]
) -> None:
    with pytest.raises(error):
        box.enqueue("s", expected, events)  # type: ignore[arg-type]
    assert len(box) == 0


def test_a_closed_outbox_refuses_and_the_directory_can_be_reopened(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    box = Outbox(path)
    with pytest.raises(ValueError):
        Outbox(path)  # LMDB: one environment per directory per process
    with pytest.raises(ValueError):
        ReadCache(path=path)  # nor may the cache share it
    box.close()
    box.close()
    with pytest.raises(ValueError):
        box.enqueue("s", ANY, [NewEvent("E")])
    with pytest.raises(ValueError):
        len(box)
    Outbox(path).close()


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    Outbox(path).close()
    env = lmdb.open(str(path), max_dbs=3)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="unsupported outbox format"):
        Outbox(path)
    # The failed open released the directory: fix the format and it opens.
    env = lmdb.open(str(path), max_dbs=3)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
    env.close()
    Outbox(path).close()


def test_the_outbox_commits_with_fsync(box: Outbox) -> None:
    # A crash cannot be staged in a unit test; this pins the setting that makes
    # "queued" mean "on disk": every commit (data and meta pages) is synced.
    flags = box._env.flags()
    assert flags["sync"] and flags["metasync"]
