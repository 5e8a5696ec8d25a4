"""The on-disk format of the event store, version 1: the one spec of a data dir.

Everything that reads or writes a data directory (the store, the test helpers,
and tools that verify, repair or back it up) takes the layout from here.

Files
=====

One LMDB environment in ``<data_dir>/lmdb/`` (``data.mdb``, ``lock.mdb``).
The daemon's single-instance lock is ``<data_dir>/LOCK`` (``lock.py``).
``<data_dir>/STORE_ID`` is the store marker: the store id (32 hex digits, the
same as ``store_id`` in ``meta``) and a newline, written once the store has
one; with it, a missing or empty ``data.mdb`` is a lost store, not a new one
(``integrity.py``). It sits in the data dir, not in ``lmdb/``, so that a
removed ``lmdb/`` is caught too. ``<data_dir>/quarantine/`` holds the raw
bytes of records that ``lighthouse-store repair --quarantine`` replaced
(``repair.py``).
``data.mdb`` may run past LMDB's last page: space kept zero-filled ahead of
LMDB's used size so that commits overwrite allocated blocks instead of growing
the file (``prealloc.py``; after a crash it may also hold pages of a
transaction that never committed). LMDB never reads it.

Key layout
==========

All integers are unsigned 64-bit big-endian, so byte order is numeric order
and cursors walk positions and revisions in order.

==============  ====================================  =============================================
database        key                                   value
==============  ====================================  =============================================
``log``         position (1, 2, 3, ... gapless)       stored record (below): a serialized
                                                      RecordedEvent + CRC-32 trailer
``streams``     stream name, UTF-8                    stream_id, next_revision, last_position
``stream_idx``  stream_id + revision                  position
``event_ids``   event id, 16 raw bytes                position
``meta``        ``b"format"``                         ``b"1"``
                ``b"next_stream_id"``                 the next stream_id to hand out
                ``b"store_id"``                       16 random bytes, set when the store is
                                                      created (or first opened by a daemon
                                                      that knows of it); kept by backups
``consumers``   consumer name, UTF-8                  last acknowledged position
==============  ====================================  =============================================

A stream exists once it has an event; ``next_revision`` is its event count.
Streams get a compact numeric id so that index keys are 16 fixed bytes
whatever the name's length. The log is written only with ``MDB_APPEND``
(positions only grow); nothing in it is ever updated in place or deleted. A
consumer's position never goes backwards. ``recorded_at`` never decreases
along the log (nor, therefore, along a stream), so a time window is a key
range.

Stored record
=============

A stored record *is* a serialized ``lighthouse.store.v1.RecordedEvent``, so a
read sends it to the client without parsing or re-encoding it::

    record = body || 0x55 || crc32(body) as 4 bytes little-endian

``body`` holds fields 1-9 of RecordedEvent: the client's ProposedEvent bytes
(fields 1-5 have the same numbers in both messages, so they are reused as
sent, after the event id was made canonical) followed by stream (6),
revision (7), position (8) and recorded_at (9). The trailer is field 10,
``fixed32 checksum`` (tag 0x55 = field 10, wire type 5). Protobuf parsers
accept fields in any order and an explicit zero, so every record is a valid
RecordedEvent as it stands. The CRC-32 is zlib's (as ``zlib.crc32`` computes
it) and covers every byte of the body. ``records.py`` encodes and checks
records.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lighthouse_store.errors import StorageFailure

FORMAT_VERSION = b"1"
MAX_DBS = 8  # named databases an environment has room for (six are used)

LOG = b"log"
STREAMS = b"streams"
STREAM_INDEX = b"stream_idx"
EVENT_IDS = b"event_ids"
META = b"meta"
CONSUMERS = b"consumers"

FORMAT_KEY = b"format"  # in meta
NEXT_STREAM_ID_KEY = b"next_stream_id"  # in meta
STORE_ID_KEY = b"store_id"  # in meta
MARKER = "STORE_ID"  # in the data dir
QUARANTINE = "quarantine"  # in the data dir
MAX_KEY_BYTES = 511  # LMDB's longest key (MDB_MAXKEYSIZE)

# Log keys; stream_idx, event_ids and consumers values; stream ids in meta.
U64 = struct.Struct(">Q")
INDEX_KEY = struct.Struct(">QQ")  # stream_idx keys: stream_id, revision
STREAM_STATE = struct.Struct(">QQQ")  # streams values: stream_id, next_revision, last_position


def env_path(data_dir: Path) -> Path:
    """The LMDB environment's directory in a data dir."""
    return Path(data_dir) / "lmdb"


def data_file(data_dir: Path) -> Path:
    """LMDB's data file in a data dir."""
    return env_path(data_dir) / "data.mdb"


@dataclass(frozen=True, slots=True)
class Databases:
    """The handles of an environment's named databases (py-lmdb ``_Database``)."""

    log: Any
    streams: Any
    stream_index: Any
    event_ids: Any
    meta: Any
    consumers: Any


def open_databases(env: Any, txn: Any = None) -> Databases:
    """Open the named databases of an environment: creating them if new, or,
    given a read transaction (the tools), only if they exist (else LMDB's
    ``NotFoundError``)."""
    create = txn is None
    names = (LOG, STREAMS, STREAM_INDEX, EVENT_IDS, META, CONSUMERS)
    return Databases(*(env.open_db(name, txn=txn, create=create) for name in names))


def check_format(txn: Any, dbs: Databases) -> None:
    """Mark a new store with this format version; refuse one of another."""
    found = txn.get(FORMAT_KEY, db=dbs.meta)
    if found is None:
        txn.put(FORMAT_KEY, FORMAT_VERSION, db=dbs.meta)
    elif found != FORMAT_VERSION:
        raise StorageFailure(f"unsupported storage format {found!r}")
