"""``lighthouse-store verify``: every record and every index entry of a store, checked.

It reads the store as an LMDB reader: offline, or beside a running daemon,
whose writers it never blocks, without taking the data dir's lock. All of
it happens in one read transaction, so it checks one consistent state of
the store (the newest when it began); meanwhile LMDB keeps the pages of that
state, so a busy store's file may grow while a long verify runs.

What it checks
==============

1. **Files**: the start-up checks of ``integrity.py`` (the marker, the data
   file against its meta pages), and that the two meta pages are one commit
   apart (``integrity.metas_agree``).
2. **meta**: the format version; the store id (the marker's); the next
   stream id above every stream's.
3. **The log**: positions 1, 2, ... with no gap up to the head; every
   checksum; each record's position field its key; ``recorded_at`` never
   decreasing; the event id a UUID.
4. **Every record against the indexes**: ``streams`` knows its stream;
   ``stream_idx`` has (stream id, revision) pointing at its position;
   ``event_ids`` has its id pointing at its position; each stream's
   revisions are 0, 1, 2, ... in log order (gapless).
5. **Every index entry against the records**: each stream's
   ``next_revision`` is its number of records and ``last_position`` its last
   one; stream ids are unique; ``stream_idx`` and ``event_ids`` hold exactly
   as many entries as the log has records (with 4, which finds an entry for
   every record, each pointing at it, that means no entry points anywhere
   else); if one holds more, it is walked to name the strays.
6. **consumers**: every checkpoint at or below the head.

Memory grows with the number of streams, not of events; time is one pass
over the log with two B-tree lookups per record.

The report
==========

One JSON object on stdout: ``ok``, ``store_id``, ``head_position``,
``checked`` (records, streams, index entries, consumers), ``findings`` (each
``{"what", "position", "message"}``; the first :data:`MAX_LISTED`) and
``findings_total``. Exit status 0 when clean, 1 with findings (a store that
cannot be opened at all is a finding too). A damaged B-tree page stops the
walk it is met in (LMDB fails the transaction): what was not walked is not
reported clean, since the report is not ``ok``.
"""

from __future__ import annotations

import bisect
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import corruption, integrity, lmdb_format, lmdb_txn, records
from lighthouse_store.corruption import Finding
from lighthouse_store.errors import StoreError
from lighthouse_store.lmdb_format import INDEX_KEY, STREAM_STATE, U64, Databases

MAX_LISTED = 1000
FILE = "file"
META = "meta"
STREAMS = "streams"
CONSUMERS = "consumers"


@dataclass
class Report:
    store_id: str | None = None
    head_position: int = 0
    checked: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    findings_total: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.findings_total == 0

    def add(self, what: str, message: str, position: int | None = None) -> None:
        self.findings_total += 1
        if len(self.findings) < MAX_LISTED:
            self.findings.append(Finding(what, position, message))

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "store_id": self.store_id,
            "head_position": self.head_position,
            "checked": self.checked,
            "findings": [
                {"what": f.what, "position": f.position, "message": f.message}
                for f in self.findings
            ],
            "findings_total": self.findings_total,
            "seconds": round(self.seconds, 3),
        }


def main(data_dir: Path) -> int:
    report = verify(data_dir)
    json.dump(report.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if report.ok else 1


def verify(data_dir: Path) -> Report:
    """Verify the store in ``data_dir`` (the module docstring)."""
    report = Report()
    started = time.monotonic()
    try:
        marker = integrity.check_files(data_dir)
    except StoreError as exc:
        report.add(FILE, exc.message)
        return report
    data = lmdb_format.data_file(data_dir)
    if not data.exists():
        report.add(FILE, f"{data_dir} holds no store (no {data})")
        return report
    verify_environment(lmdb_format.env_path(data_dir), report, marker=marker)
    report.seconds = time.monotonic() - started
    return report


def verify_environment(
    env_dir: Path, report: Report, *, marker: str | None = None, lock: bool = True
) -> None:
    """Checks 1 (but the marker) to 6 of the environment in ``env_dir``, into
    ``report``. ``lock`` False: a copy no daemon can have open (a backup)."""
    pages = integrity.read_meta_pages(env_dir / "data.mdb")
    if pages is not None and not integrity.metas_agree(pages):
        t0, t1 = pages[0].txnid, pages[1].txnid
        report.add(FILE, f"LMDB's meta pages disagree (transactions {t0} and {t1})")
    try:
        env = lmdb_txn.open_reader(env_dir, lock=lock)
    except StoreError as exc:
        report.add(FILE, exc.message)
        return
    try:
        with lmdb_txn.read_transaction(env) as txn:
            _Walk(txn, lmdb_format.open_databases(env, txn), report).run(marker)
    except StoreError as exc:  # LMDB failed the transaction: a damaged page, a missing db
        report.add(corruption.BTREE, exc.message)
    finally:
        env.close()


class _Stream:
    """A stream as the log has it so far: its next revision, its last position."""

    __slots__ = ("count", "last_position")

    def __init__(self) -> None:
        self.count = 0
        self.last_position = 0


class _Walk:
    def __init__(self, txn: Any, dbs: Databases, report: Report) -> None:
        self.txn, self.dbs, self.report = txn, dbs, report
        self.streams: dict[str, _Stream] = {}
        self.records = 0
        # Runs of missing or unreadable positions, ascending, and their ends.
        self.unreadable: list[tuple[int, int]] = []
        self._ends: list[int] = []

    def run(self, marker: str | None) -> None:
        self._meta(marker)
        self._log()
        self._streams()
        for name, db in (("stream_idx", self.dbs.stream_index), ("event_ids", self.dbs.event_ids)):
            self._index_size(name, db)
        self._consumers()

    def _meta(self, marker: str | None) -> None:
        found = self.txn.get(lmdb_format.FORMAT_KEY, db=self.dbs.meta)
        if found != lmdb_format.FORMAT_VERSION:
            what = f"the storage format is {found!r}, not {lmdb_format.FORMAT_VERSION!r}"
            self.report.add(META, what)
        self.report.store_id = integrity.stored_id(self.txn, self.dbs)
        if self.report.store_id is None:
            self.report.add(META, "the store has no store id")
        elif marker is not None and marker != self.report.store_id:
            self.report.add(META, f"the store is {self.report.store_id}, its marker says {marker}")

    def _log(self) -> None:
        expected, last_ts = 1, 0
        for key, raw in self.txn.cursor(db=self.dbs.log):
            if len(key) != U64.size:
                self.report.add(corruption.RECORD, f"the log has a key of {len(key)} bytes")
                continue
            position = U64.unpack(key)[0]
            if position != expected:
                gap = f"{expected}" if position == expected + 1 else f"{expected} to {position - 1}"
                what = f"the log has no events at positions {gap}"
                self.report.add(corruption.MISSING, what, expected)
                self._unreadable(expected, position - 1)
            expected = position + 1
            self.records += 1
            event, findings = integrity.check_record(self.txn, self.dbs, position, raw)
            for f in findings:
                self.report.add(f.what, f.message, f.position)
            if event is None:
                self._unreadable(position, position)
                continue
            at = records.recorded_at_ns(event)
            if at < last_ts:
                what = f"recorded_at goes back at position {position}"
                self.report.add(corruption.RECORD, what, position)
            last_ts = max(last_ts, at)
            self._revision(event.stream, event.revision, position)
        self.report.head_position = expected - 1
        self.report.checked["records"] = self.records

    def _revision(self, stream: str, revision: int, position: int) -> None:
        """Check that a stream's revisions run 0, 1, 2, ... in log order. A
        gap that unreadable records since the stream's previous event could
        fill is theirs (already reported); the count goes on from here."""
        seen = self.streams.setdefault(stream, _Stream())
        if revision != seen.count:
            unknown = self._unreadable_between(seen.last_position, position)
            if revision < seen.count or unknown < revision - seen.count:
                self.report.add(
                    corruption.RECORD,
                    f"stream {stream!r} has revision {revision} at position {position}, "
                    f"after revision {seen.count - 1}",
                    position,
                )
        seen.count = revision + 1
        seen.last_position = position

    def _unreadable(self, first: int, last: int) -> None:
        if self.unreadable and self.unreadable[-1][1] == first - 1:
            first = self.unreadable.pop()[0]
        self.unreadable.append((first, last))
        self._ends.append(last)
        if len(self._ends) > len(self.unreadable):
            del self._ends[-2]

    def _unreadable_between(self, after: int, before: int) -> int:
        """How many positions strictly between two were missing or unreadable."""
        count = 0
        for first, last in self.unreadable[bisect.bisect_right(self._ends, after) :]:
            if first >= before:
                break
            count += min(last, before - 1) - max(first, after + 1) + 1
        return count

    def _streams(self) -> None:
        ids: set[int] = set()
        raw_next = self.txn.get(lmdb_format.NEXT_STREAM_ID_KEY, db=self.dbs.meta)
        next_id = U64.unpack(raw_next)[0] if raw_next and len(raw_next) == U64.size else 0
        count = 0
        for key, value in self.txn.cursor(db=self.dbs.streams):
            count += 1
            name = bytes(key).decode(errors="replace")
            if len(value) != STREAM_STATE.size:
                self.report.add(STREAMS, f"stream {name!r} has a state of {len(value)} bytes")
                continue
            sid, next_revision, last_position = STREAM_STATE.unpack(value)
            if sid in ids or sid >= next_id:
                self.report.add(STREAMS, f"stream {name!r} has id {sid}, taken or not handed out")
            ids.add(sid)
            seen = self.streams.pop(name, None)
            if seen is None:
                self.report.add(STREAMS, f"stream {name!r} has no events in the log")
            elif (next_revision, last_position) != (seen.count, seen.last_position):
                self.report.add(
                    STREAMS,
                    f"stream {name!r} says {next_revision} events, the last at position "
                    f"{last_position}; the log has {seen.count}, the last at {seen.last_position}",
                    seen.last_position,
                )
        self.report.checked["streams"] = count
        # A stream with events but no state was reported with each of its records.

    def _index_size(self, name: str, db: Any) -> None:
        entries = int(self.txn.stat(db)["entries"])
        self.report.checked[name] = entries
        if entries > self.records:
            self._strays(name, db)

    def _strays(self, name: str, db: Any) -> None:
        """Name the entries of an index that point at no record of theirs."""
        for key, value in self.txn.cursor(db=db):
            position = U64.unpack(value)[0] if len(value) == U64.size else 0
            raw = self.txn.get(U64.pack(position), db=self.dbs.log) if position else None
            if raw is None:
                what = f"{name} has an entry for position {position}, not in the log"
                self.report.add(corruption.INDEX, what, position)
                continue
            event, _ = integrity.check_record(self.txn, self.dbs, position, raw)
            if event is None:
                continue  # reported with the log
            if name == "stream_idx":
                state = self.txn.get(event.stream.encode(), db=self.dbs.streams)
                sid = STREAM_STATE.unpack(state)[0] if state else None
                points_back = key == INDEX_KEY.pack(sid or 0, event.revision) and sid is not None
            else:
                points_back = bytes(key) == _event_id(event)
            if not points_back:
                what = f"{name} has a stray entry for position {position}"
                self.report.add(corruption.INDEX, what, position)

    def _consumers(self) -> None:
        count = 0
        for key, value in self.txn.cursor(db=self.dbs.consumers):
            count += 1
            name = bytes(key).decode(errors="replace")
            position = U64.unpack(value)[0] if len(value) == U64.size else None
            if position is None or position > self.report.head_position:
                self.report.add(CONSUMERS, f"consumer {name!r} is at {position}, past the head")
        self.report.checked["consumers"] = count


def _event_id(event: pb.RecordedEvent) -> bytes | None:
    try:
        return records.event_id_bytes(event)
    except ValueError:
        return None
