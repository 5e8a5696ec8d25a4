"""``lighthouse-store repair``: every index rebuilt from the log, unreadable records quarantined.

It runs on a stopped store: it takes the data dir's lock (``lock.py``), so it
refuses (exit status 3) while a daemon or another tool holds it, and no
daemon can start on the store while it runs.

Steps
=====

1. The start-up file checks (``integrity.check_files``): a truncated or lost
   ``data.mdb`` cannot be repaired, only restored (exit status 4).
2. One pass over the log (a read transaction of the store as it is): every
   position from 1 to the head must hold a readable record (checksum, its
   own position), or be named with ``--quarantine``. Anything else stops the
   repair before it changes anything (exit status 1): an unreadable record
   not named, a named one that reads fine, two records with one event id or
   one stream revision, a log B-tree LMDB cannot walk (then only a backup
   helps).
3. Each quarantined position's raw bytes (if LMDB still has any) go to
   ``<data_dir>/quarantine/position-<P>.bin``, with ``position-<P>.json``
   beside them (length, SHA-256, what was known of the record), flushed.
4. A new environment is written in ``<data_dir>/lmdb.repair/``: the log,
   record by record, with a placeholder in place of each quarantined record;
   ``meta`` (format, the same store id, the next stream id); every index
   rebuilt from the log (stream ids handed out anew, in order of first
   appearance); the consumers' checkpoints copied (at most the head). It is
   flushed and then verified (``verify.py``); a finding stops the repair
   (exit status 1) and the store is left as it was.
5. The swap: ``lmdb/`` becomes ``lmdb.before-repair-<UTC time>/``,
   ``lmdb.repair/`` becomes ``lmdb/``, and the data dir is flushed. The old
   files stay for the operator to delete once satisfied. (A crash between
   the two renames leaves no ``lmdb/``: the daemon then refuses to start,
   exit status 4, and both directories are there to rename by hand.)

The placeholder
===============

A quarantined record is replaced, not removed, so the log stays gapless and
so do its stream's revisions: a well-formed event of type ``$corrupted``
(``application/json``: ``{"position", "reason", "bytes", "sha256",
"file"}``; metadata ``quarantined_at``). It keeps the stream, revision and
event id that the old indexes gave its position (``stream_idx`` and
``event_ids`` entries pointing at it), so the event id stays taken (an
append retried with it gets ``EVENT_ID_CONFLICT``, never a second copy);
when they know nothing, it goes to the stream ``$corrupted`` with a new id
(and the stream it came from may then miss a revision, which the check in
step 4 reports). Its ``recorded_at`` is that of the record before it, so
time never goes back along the log.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import struct
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import integrity, lmdb_format, lmdb_txn, records, verify
from lighthouse_store.errors import StoreError
from lighthouse_store.lmdb_format import INDEX_KEY, STREAM_STATE, U64, Databases
from lighthouse_store.lock import DataDirLock

BATCH = 10_000  # records per write transaction of the new environment
PLACEHOLDER_TYPE = "$corrupted"
PLACEHOLDER_STREAM = "$corrupted"


class RepairRefused(Exception):
    """The store cannot be repaired as asked; nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def main(data_dir: Path, quarantine: list[int]) -> int:
    lock = DataDirLock(data_dir).acquire()
    try:
        try:
            summary = repair(Path(data_dir), sorted(set(quarantine)))
        except RepairRefused as exc:
            json.dump({"repaired": False, "problems": exc.problems}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 1
    finally:
        lock.release()
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


@dataclass
class _Identity:
    """What the old indexes say of a quarantined position."""

    stream: str | None = None
    revision: int | None = None
    event_id: bytes | None = None


@dataclass
class _Plan:
    head: int = 0
    store_id: str = ""
    map_size: int = 0
    raw: dict[int, bytes | None] = field(default_factory=dict)  # quarantined: bytes or gap
    identity: dict[int, _Identity] = field(default_factory=dict)
    consumers: dict[bytes, int] = field(default_factory=dict)


def repair(data_dir: Path, quarantine: list[int]) -> dict[str, Any]:
    """Repair the (locked) store in ``data_dir``; a summary. Raises
    RepairRefused (nothing changed), StoreDamaged, StoreError."""
    integrity.check_files(data_dir)
    old_dir = lmdb_format.env_path(data_dir)
    if not lmdb_format.data_file(data_dir).exists():
        raise RepairRefused([f"{data_dir} holds no store"])
    plan = _survey(old_dir, set(quarantine))
    saved = [_save_quarantined(data_dir, p, plan) for p in quarantine]
    new_dir = data_dir / "lmdb.repair"
    shutil.rmtree(new_dir, ignore_errors=True)  # left by a repair that stopped
    new_dir.mkdir()
    try:
        streams = _rebuild(old_dir, new_dir, plan, {e["position"]: e["file"] for e in saved})
        report = verify.Report()
        verify.verify_environment(new_dir, report, marker=plan.store_id)
        if not report.ok:
            problems = [f"the rebuilt store fails verify: {f.message}" for f in report.findings]
            raise RepairRefused(problems)
    except BaseException:
        shutil.rmtree(new_dir, ignore_errors=True)
        raise
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    previous = data_dir / f"lmdb.before-repair-{stamp}"
    for n in range(1, 1000):  # two repairs within one second keep both copies
        if not previous.exists():
            break
        previous = data_dir / f"lmdb.before-repair-{stamp}-{n}"
    old_dir.rename(previous)
    new_dir.rename(old_dir)
    integrity.sync_dir(data_dir)
    return {
        "repaired": True,
        "head_position": plan.head,
        "streams": streams,
        "quarantined": saved,
        "previous": str(previous),
    }


def _survey(old_dir: Path, quarantine: set[int]) -> _Plan:
    """Step 2: read the old store, refuse what cannot be repaired as asked."""
    plan = _Plan()
    problems: list[str] = []
    env = lmdb_txn.open_reader(old_dir)
    try:
        plan.map_size = int(env.info()["map_size"])
        with lmdb_txn.read_transaction(env) as txn:
            dbs = lmdb_format.open_databases(env, txn)
            plan.store_id = integrity.stored_id(txn, dbs) or integrity.new_store_id()
            expected = 1
            for key, raw in txn.cursor(db=dbs.log):
                position = U64.unpack(key)[0]
                for gap in range(expected, position):
                    _unreadable(plan, problems, quarantine, gap, None)
                expected = position + 1
                if _readable(raw, position):
                    if position in quarantine:
                        problems.append(f"position {position} is readable: nothing to quarantine")
                else:
                    _unreadable(plan, problems, quarantine, position, bytes(raw))
            plan.head = expected - 1
            for position in sorted(quarantine):
                if position > plan.head:
                    problems.append(f"position {position} is past the head ({plan.head})")
            if plan.raw:
                plan.identity = _identities(txn, dbs, set(plan.raw))
            plan.consumers = {
                bytes(k): min(U64.unpack(v)[0], plan.head)
                for k, v in txn.cursor(db=dbs.consumers)
                if len(v) == U64.size
            }
    except StoreError as exc:
        problems.append(f"the log cannot be read through ({exc.message}); restore a backup")
    finally:
        env.close()
    if problems:
        raise RepairRefused(problems)
    return plan


def _readable(raw: bytes, position: int) -> bool:
    return records.checksum_ok(raw) and records.decode(raw).position == position


def _unreadable(
    plan: _Plan, problems: list[str], quarantine: set[int], position: int, raw: bytes | None
) -> None:
    if position in quarantine:
        plan.raw[position] = raw
    else:
        what = "is missing" if raw is None else "is unreadable"
        problems.append(
            f"position {position} {what}: name it with --quarantine {position} to replace it "
            "by a $corrupted placeholder (its bytes are saved first)"
        )


def _identities(txn: Any, dbs: Databases, positions: set[int]) -> dict[int, _Identity]:
    """What the old indexes say of each position: stream, revision, event id.
    Damaged indexes say nothing (the placeholder goes to $corrupted)."""
    found = {p: _Identity() for p in positions}
    wanted = {U64.pack(p): p for p in positions}
    try:
        names = {
            STREAM_STATE.unpack(v)[0]: bytes(k).decode() for k, v in txn.cursor(db=dbs.streams)
        }
        for key, value in txn.cursor(db=dbs.stream_index):
            if (p := wanted.get(bytes(value))) is not None:
                sid, revision = INDEX_KEY.unpack(key)
                found[p].stream, found[p].revision = names.get(sid), revision
        for key, value in txn.cursor(db=dbs.event_ids):
            if (p := wanted.get(bytes(value))) is not None:
                found[p].event_id = bytes(key)
    except (StoreError, ValueError, struct.error):
        pass
    return found


def _save_quarantined(data_dir: Path, position: int, plan: _Plan) -> dict[str, Any]:
    """Step 3: the raw bytes and what is known of them, flushed; the summary."""
    folder = data_dir / lmdb_format.QUARANTINE
    folder.mkdir(exist_ok=True)
    raw = plan.raw[position]
    known = plan.identity.get(position, _Identity())
    entry: dict[str, Any] = {
        "position": position,
        "reason": "missing" if raw is None else "unreadable",
        "bytes": None if raw is None else len(raw),
        "sha256": None if raw is None else hashlib.sha256(raw).hexdigest(),
        "file": None,
        "stream": known.stream,
        "revision": known.revision,
        "event_id": None if known.event_id is None else str(uuid.UUID(bytes=known.event_id)),
    }
    if raw is not None:
        path = folder / f"position-{position}.bin"
        integrity.write_flushed(path, raw)
        entry["file"] = str(path.relative_to(data_dir))
    description = json.dumps(entry, indent=2).encode()
    integrity.write_flushed(folder / f"position-{position}.json", description)
    integrity.sync_dir(folder)
    return entry


def _rebuild(old_dir: Path, new_dir: Path, plan: _Plan, files: dict[int, str | None]) -> int:
    """Step 4: the new environment; how many streams it has."""
    map_size = max(plan.map_size, 2 * (old_dir / "data.mdb").stat().st_size, 1 << 20)
    new = lmdb_txn.open_env(new_dir, map_size=map_size, durable=False, max_readers=16)
    old = lmdb_txn.open_reader(old_dir)
    lock = threading.Lock()
    try:
        out = lmdb_format.open_databases(new)
        streams: dict[bytes, list[int]] = {}  # name -> [stream id, next revision, last position]
        spare_revision = 0  # of the $corrupted stream
        last_ts = 0
        with lmdb_txn.read_transaction(old) as rtxn:
            log = lmdb_format.open_databases(old, rtxn).log
            for first in range(1, plan.head + 1, BATCH):
                with lmdb_txn.write_transaction(new, lock) as wtxn:
                    for position in range(first, min(first + BATCH, plan.head + 1)):
                        if position in plan.raw:
                            known = plan.identity.get(position, _Identity())
                            record = _placeholder(
                                position, plan.raw[position], known, last_ts,
                                files.get(position), spare_revision,
                            )  # fmt: skip
                            if known.stream is None or known.revision is None:
                                spare_revision += 1
                        else:
                            record = bytes(rtxn.get(U64.pack(position), db=log))
                        event = records.decode(record)
                        last_ts = max(last_ts, records.recorded_at_ns(event))
                        _index(wtxn, out, streams, event, U64.pack(position), record)
        with lmdb_txn.write_transaction(new, lock) as wtxn:
            for name, (sid, next_revision, last) in sorted(streams.items()):
                wtxn.put(name, STREAM_STATE.pack(sid, next_revision, last), db=out.streams)
            wtxn.put(lmdb_format.FORMAT_KEY, lmdb_format.FORMAT_VERSION, db=out.meta)
            wtxn.put(lmdb_format.STORE_ID_KEY, bytes.fromhex(plan.store_id), db=out.meta)
            wtxn.put(lmdb_format.NEXT_STREAM_ID_KEY, U64.pack(len(streams) + 1), db=out.meta)
            for consumer, at in plan.consumers.items():
                wtxn.put(consumer, U64.pack(at), db=out.consumers)
        with lmdb_txn.driver_errors(lmdb_txn.WRITE_FAILED):
            new.sync(True)
        return len(streams)
    finally:
        old.close()
        new.close()
        integrity.sync_dir(new_dir)


def _index(
    txn: Any, dbs: Databases, streams: dict[bytes, list[int]], event: pb.RecordedEvent,
    key: bytes, record: bytes,
) -> None:  # fmt: skip
    """Put one record and its index entries in the new environment."""
    name = event.stream.encode()
    state = streams.get(name)
    if state is None:
        state = streams[name] = [len(streams) + 1, 0, 0]
    state[1], state[2] = max(state[1], event.revision + 1), event.position
    txn.put(key, record, db=dbs.log, append=True)
    index_key = INDEX_KEY.pack(state[0], event.revision)
    if not txn.put(index_key, key, db=dbs.stream_index, overwrite=False):
        raise RepairRefused([f"two records are {event.stream!r} revision {event.revision}"])
    if not txn.put(records.event_id_bytes(event), key, db=dbs.event_ids, overwrite=False):
        raise RepairRefused([f"two records have event id {event.event_id}"])


def _placeholder(
    position: int, raw: bytes | None, known: _Identity, recorded_at: int,
    file: str | None, spare_revision: int,
) -> bytes:  # fmt: skip
    """The ``$corrupted`` record that takes a quarantined position (module docstring)."""
    unknown = known.stream is None or known.revision is None
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    data = {
        "position": position,
        "reason": "missing" if raw is None else "unreadable",
        "bytes": None if raw is None else len(raw),
        "sha256": None if raw is None else hashlib.sha256(raw).hexdigest(),
        "file": file,
    }
    event_id = known.event_id or uuid.uuid4().bytes
    proposed = pb.ProposedEvent(
        event_id=str(uuid.UUID(bytes=event_id)),
        event_type=PLACEHOLDER_TYPE,
        data=json.dumps(data).encode(),
        content_type="application/json",
        metadata={"quarantined_at": now},
    ).SerializeToString()
    (record,) = records.encode_records(
        [proposed],
        records.stream_field(PLACEHOLDER_STREAM if unknown else str(known.stream)),
        spare_revision if unknown else int(known.revision or 0),
        position,
        records.timestamp_field(recorded_at),
    )
    return record
