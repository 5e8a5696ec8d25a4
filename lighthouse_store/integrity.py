"""Start-up checks of a data dir: before LMDB maps its file, and right after.

LMDB trusts its file. It maps ``data.mdb`` and reads pages through the
mapping, so a page past the end of a truncated file is a SIGBUS that kills
the process (no message, exit 135), and an emptied or deleted ``data.mdb``
is, to LMDB, a new empty store. Each start (and each tool that opens a
store: verify, stats, backup, repair) therefore checks, in order:

1. **The marker** (:func:`check_files`). ``<data_dir>/STORE_ID`` names the
   store once it has an id (``lmdb_format.py``). With a marker, a missing or
   empty ``data.mdb`` is a lost store: refused (:class:`StoreDamaged`, exit
   status 4) instead of starting empty. Without one, a data dir with no
   ``data.mdb`` is new.
2. **The file against LMDB's meta pages** (:func:`check_files`), read with
   plain reads, before LMDB maps anything: the newer meta page (LMDB picks
   the one with the higher transaction id) names the last page the store
   uses; a file shorter than that page's end was truncated: refused, exit
   status 4. (The file may be longer: ``prealloc.py``.) A file whose meta
   pages are not LMDB's is left to LMDB, which refuses it without mapping it
   (``MDB_INVALID``, exit status 1).
3. **The store id** (:func:`claim_store_id`, in the store's first write
   transaction): ``store_id`` in ``meta`` must be the marker's. A store
   without one (new, or made before store ids) gets one, and the marker is
   written after that commit (:func:`write_marker`); a ``data.mdb`` without
   one beside a marker, or with another, is another store's file: refused.
4. **The newest records** (:func:`check_newest`): the last
   :data:`NEWEST_CHECKED` records are read back: checksums, positions one
   after another, and each readable record's entries in ``stream_idx`` and
   ``event_ids`` pointing back at it. A finding does not stop the start: the
   daemon starts read-only (``LmdbEventStore.degraded``, the degradation
   controller's ``degraded`` level, ``degradation.py``; appends get
   ``UNAVAILABLE`` / ``DEGRADED``), reads and subscriptions go on, and the log
   says which positions (``corruption.found``). Refusing to start would
   make every good record unreadable too, for the sake of one bad one.

Deeper checks are ``lighthouse-store verify`` (``verify.py``); the background
scrub (``scrub.py``) re-reads old records while the daemon is idle.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import corruption, lmdb_format, records
from lighthouse_store.corruption import Finding
from lighthouse_store.errors import StoreDamaged
from lighthouse_store.lmdb_format import INDEX_KEY, STREAM_STATE, U64, Databases
from lighthouse_store.records import checksum_failed

NEWEST_CHECKED = 256  # records read back at every start

# LMDB 0.9's meta page (lmdb.h, mdb.c; 64-bit builds): a 16-byte page header
# (flags at byte 10), then MDB_meta: magic, version, address, map size, two
# MDB_db of 48 bytes (the page size is the first one's md_pad), the last
# page number and the transaction id.
_META_FLAG = 0x08  # P_META
_MAGIC = 0xBEEFC0DE
_VERSION = 1
_FLAGS = struct.Struct("<H")  # at byte 10
_HEAD = struct.Struct("<II")  # magic, version at byte 16
_MAPSIZE = struct.Struct("<Q")  # at byte 32
_PSIZE = struct.Struct("<I")  # at byte 40
_TAIL = struct.Struct("<QQ")  # last page, transaction id at byte 136
_META_BYTES = 152


@dataclass(frozen=True, slots=True)
class MetaPage:
    page_size: int
    last_page: int
    txnid: int
    map_size: int  # as the last writer set it

    @property
    def used_bytes(self) -> int:
        """Bytes of the file that this state of the store uses."""
        return (self.last_page + 1) * self.page_size


def read_meta_pages(path: Path) -> tuple[MetaPage, MetaPage] | None:
    """LMDB's two meta pages of a data file, read without mapping it; None
    if either is not an LMDB meta page (LMDB then refuses the file itself)."""
    with open(path, "rb") as f:
        first = _meta(f.read(_META_BYTES))
        if first is None:
            return None
        f.seek(first.page_size)
        second = _meta(f.read(_META_BYTES))
    return None if second is None else (first, second)


def _meta(page: bytes) -> MetaPage | None:
    if len(page) < _META_BYTES or not _FLAGS.unpack_from(page, 10)[0] & _META_FLAG:
        return None
    if _HEAD.unpack_from(page, 16) != (_MAGIC, _VERSION):
        return None
    last_page, txnid = _TAIL.unpack_from(page, 136)
    map_size = _MAPSIZE.unpack_from(page, 32)[0]
    return MetaPage(_PSIZE.unpack_from(page, 40)[0], last_page, txnid, map_size)


def newest_meta(pages: tuple[MetaPage, MetaPage]) -> MetaPage:
    """The meta page LMDB opens the store from: the higher transaction id."""
    return pages[1] if pages[1].txnid > pages[0].txnid else pages[0]


def metas_agree(pages: tuple[MetaPage, MetaPage]) -> bool:
    """Whether the meta pages are one commit apart, as LMDB leaves them:
    commit n writes meta page n % 2, so page 0 holds an even transaction id
    and page 1 the next or the previous odd one (both 0 in a new file). A
    damaged id would have LMDB open an older state of the store, silently."""
    t0, t1 = pages[0].txnid, pages[1].txnid
    return (t0, t1) == (0, 0) or (t0 % 2 == 0 and t1 % 2 == 1 and abs(t0 - t1) == 1)


def read_marker(data_dir: Path) -> str | None:
    """The store id the data dir's marker names, None if it has no marker."""
    try:
        text = (Path(data_dir) / lmdb_format.MARKER).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    if len(text) != 32 or any(c not in "0123456789abcdef" for c in text):
        raise StoreDamaged(
            f"{Path(data_dir) / lmdb_format.MARKER} does not hold a store id ({text[:40]!r})"
        )
    return text


def write_marker(data_dir: Path, store_id: str) -> None:
    """Write the marker durably: a new file, flushed, renamed into place,
    and the directory flushed. The new file's name is this process's own:
    worker processes opening a new store at once each write the same id
    (claimed in LMDB), and neither may rename the other's file away."""
    path = Path(data_dir) / lmdb_format.MARKER
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write_flushed(tmp, (store_id + "\n").encode())
    os.replace(tmp, path)
    sync_dir(path.parent)


def write_flushed(path: Path, content: bytes) -> None:
    """Write a file and flush it to the disk (its directory is the caller's)."""
    with open(path, "wb") as f:
        f.write(content)
    flush_file(path)


def flush_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_files(data_dir: Path) -> str | None:
    """Checks 1 and 2 (the module docstring); the marker's store id. Raises
    StoreDamaged. Call it before LMDB opens the environment."""
    marker = read_marker(data_dir)
    data = lmdb_format.data_file(data_dir)
    try:
        size = data.stat().st_size
    except FileNotFoundError:
        size = 0
    if marker is not None and size == 0:
        state = "is empty" if data.exists() else "is missing"
        raise StoreDamaged(
            f"{data} {state}, but {Path(data_dir) / lmdb_format.MARKER} says this data dir "
            f"holds store {marker}: its data is lost. Restore it from a backup "
            "(lighthouse-store restore), or remove the data dir's contents to start an "
            "empty store"
        )
    if size:
        pages = read_meta_pages(data)
        if pages is not None and size < (used := newest_meta(pages).used_bytes):
            raise StoreDamaged(
                f"{data} is {size} bytes, but the store's last page ends at byte {used}: "
                "the file was truncated. Restore the store from a backup "
                "(lighthouse-store restore)"
            )
    return marker


def new_store_id() -> str:
    return secrets.token_hex(16)


def stored_id(txn: Any, dbs: Databases) -> str | None:
    raw = txn.get(lmdb_format.STORE_ID_KEY, db=dbs.meta)
    return None if raw is None else bytes(raw).hex()


def claim_store_id(txn: Any, dbs: Databases, marker: str | None) -> str:
    """Check 3, in a write transaction: the store's id, given one if it has
    none (and no marker claims otherwise). Raises StoreDamaged."""
    stored = stored_id(txn, dbs)
    if stored is None and marker is None:
        stored = new_store_id()
        txn.put(lmdb_format.STORE_ID_KEY, bytes.fromhex(stored), db=dbs.meta)
    if marker is not None and stored != marker:
        raise StoreDamaged(
            f"data.mdb holds store {stored or '(no id)'}, but the data dir's "
            f"{lmdb_format.MARKER} says {marker}: it is another store's file"
        )
    assert stored is not None
    return stored


def check_newest(txn: Any, dbs: Databases, count: int = NEWEST_CHECKED) -> list[Finding]:
    """Check 4: read back the newest ``count`` records; what is wrong with
    them, each reported (``corruption.found``)."""
    return check_run(txn, dbs, txn.cursor(db=dbs.log).iterprev(), count)[1]


def check_run(
    txn: Any,
    dbs: Databases,
    walk: Iterable[tuple[bytes, bytes]],
    count: int,
    previous: int | None = None,
) -> tuple[int, list[Finding]]:
    """Check up to ``count`` records of a cursor's ``walk`` (either way) with
    :func:`check_record`, and that their positions follow one another (and
    ``previous``, the position before the walk, if known); each finding
    reported (``corruption.found``). The last position checked (0: none) and
    the findings."""
    findings: list[Finding] = []
    position = 0
    for key, raw in walk:
        if len(key) != U64.size:
            findings.append(
                Finding(corruption.RECORD, None, f"the log has a key of {len(key)} bytes")
            )
            continue
        previous, position = position or previous, U64.unpack(key)[0]
        if previous is not None and abs(position - previous) != 1:
            missing = previous + (1 if position > previous else -1)
            what = f"log has no event at position {missing}"
            findings.append(Finding(corruption.MISSING, missing, what))
        findings += check_record(txn, dbs, position, raw)[1]
        count -= 1
        if count == 0:
            break
    for finding in findings:
        corruption.found(finding.what, finding.position, finding.message)
    return position, findings


def check_record(
    txn: Any, dbs: Databases, position: int, raw: bytes
) -> tuple[pb.RecordedEvent | None, list[Finding]]:
    """The record at ``position``, decoded if it is readable, and what is
    wrong with it and its index entries (not reported: the caller does)."""
    if not records.checksum_ok(raw):
        return None, [Finding(corruption.CHECKSUM, position, checksum_failed(position))]
    event = records.decode(raw)
    if event.position != position:
        what = f"the event at position {position} says position {event.position}"
        return None, [Finding(corruption.RECORD, position, what)]
    out = []
    state = txn.get(event.stream.encode(), db=dbs.streams)
    index = None
    if state is not None and len(state) == STREAM_STATE.size:
        sid = STREAM_STATE.unpack(state)[0]
        index = txn.get(INDEX_KEY.pack(sid, event.revision), db=dbs.stream_index)
    if index != U64.pack(position):
        what = f"stream {event.stream!r} revision {event.revision} is not indexed at {position}"
        out.append(Finding(corruption.INDEX, position, what))
    try:
        event_id = records.event_id_bytes(event)
    except ValueError:
        event_id = None
    if event_id is None or txn.get(event_id, db=dbs.event_ids) != U64.pack(position):
        what = f"event {event.event_id} is not indexed at position {position}"
        out.append(Finding(corruption.INDEX, position, what))
    return event, out


def newest_readable_time(txn: Any, dbs: Databases) -> int:
    """recorded_at (ns) of the newest record whose checksum holds; 0 if none."""
    for _, raw in txn.cursor(db=dbs.log).iterprev():
        if records.checksum_ok(raw):
            return records.recorded_at_ns(records.decode(raw))
    return 0
