"""``lighthouse-store backup`` and ``restore``: a consistent copy, and putting one back.

Backup
======

``backup --to DIR`` copies the store while the daemon runs (or not), as an
LMDB reader that takes no lock: LMDB's own copy (``mdb_env_copy2`` with
``MDB_CP_COMPACT``) of one read transaction, so the copy is one committed
state of the store, whatever the writers do meanwhile, and holds only the
pages in use (free pages and the preallocated tail are left out). The
manifest is read in that same transaction, so its head is the copy's head.
``DIR`` must be new or empty. It gets:

- ``data.mdb``: the copy, flushed;
- ``manifest.json``, written (and flushed) last, so a directory without it
  is a backup that did not finish: ``kind`` (``lighthouse-store backup``),
  ``version`` 1, ``store_id``, ``head_position``, ``format`` (the storage
  format), ``created_at`` (UTC), ``server_version``, and ``files``
  (``data.mdb``: ``bytes`` and ``sha256``).

The copy pins the pages of its transaction while it runs, so a busy store's
file may grow by what is written meanwhile.

Restore
=======

``restore --from DIR --data-dir D`` checks before it installs anything: the
manifest's kind, version and format; the file's size and SHA-256; then a
full ``verify`` of the copy (``verify.py``), whose store id and head must be
the manifest's. Then it takes ``D``'s lock (a daemon holding it: exit status
3), refuses a ``D`` that holds anything but a ``LOCK`` (a store is never
overwritten: restore into an empty dir, then swap dirs), and installs: the
file is copied to ``D/lmdb.restore/``, flushed, renamed to ``D/lmdb/``, the
marker written (``integrity.write_marker``) and ``D`` flushed. A daemon
started on ``D`` then serves the store as it was at the manifest's head.
Every event the backup holds is there; those appended after it are not
(a client that remembers a later position sees ``INVALID_ARGUMENT`` for a
subscription start past the head, ``subscriptions.py``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lighthouse_store import __version__, integrity, lmdb_format, lmdb_reads, lmdb_txn, verify
from lighthouse_store.errors import StoreError
from lighthouse_store.lock import DataDirLock

KIND = "lighthouse-store backup"
VERSION = 1
MANIFEST = "manifest.json"
DATA = "data.mdb"


class BackupError(StoreError):
    """A backup that cannot be made or restored as asked (nothing installed)."""


def backup_main(data_dir: Path, to: Path) -> int:
    json.dump(backup(data_dir, to), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def restore_main(source: Path, data_dir: Path) -> int:
    json.dump(restore(source, data_dir), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def backup(data_dir: Path, to: Path) -> dict[str, Any]:
    """Copy the store in ``data_dir`` to the new or empty dir ``to``; the manifest."""
    integrity.check_files(data_dir)
    if not lmdb_format.data_file(data_dir).exists():
        raise BackupError(f"{data_dir} holds no store")
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise BackupError(f"{to} is not empty: a backup goes to a new or empty directory")
    to.mkdir(parents=True, exist_ok=True)
    env = lmdb_txn.open_reader(lmdb_format.env_path(data_dir))
    try:
        with lmdb_txn.read_transaction(env) as txn:
            dbs = lmdb_format.open_databases(env, txn)
            head = lmdb_reads.last_position(txn, dbs)
            store_id = integrity.stored_id(txn, dbs)
            with lmdb_txn.driver_errors("the copy failed", for_operator=True):
                env.copy(str(to), compact=True, txn=txn)
    finally:
        env.close()
    copy = to / DATA
    integrity.flush_file(copy)
    manifest = {
        "kind": KIND,
        "version": VERSION,
        "store_id": store_id,
        "head_position": head,
        "format": lmdb_format.FORMAT_VERSION.decode(),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "server_version": __version__,
        "files": {DATA: {"bytes": copy.stat().st_size, "sha256": _sha256(copy)}},
    }
    tmp = to / (MANIFEST + ".tmp")
    integrity.write_flushed(tmp, (json.dumps(manifest, indent=2) + "\n").encode())
    os.replace(tmp, to / MANIFEST)
    integrity.sync_dir(to)
    return manifest


def restore(source: Path, data_dir: Path) -> dict[str, Any]:
    """Check the backup in ``source``, then install it in the empty ``data_dir``."""
    manifest = check_backup(Path(source))
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir).acquire()
    try:
        others = sorted(p.name for p in data_dir.iterdir() if p.name != "LOCK")
        if others:
            raise BackupError(
                f"{data_dir} is not empty ({', '.join(others[:5])}): restore goes to an "
                "empty data dir, never over a store"
            )
        staging = data_dir / "lmdb.restore"
        staging.mkdir()
        shutil.copyfile(Path(source) / DATA, staging / DATA)
        integrity.flush_file(staging / DATA)
        if _sha256(staging / DATA) != manifest["files"][DATA]["sha256"]:
            raise BackupError("the copied file differs from the backup's: the disk is failing?")
        integrity.sync_dir(staging)
        staging.rename(lmdb_format.env_path(data_dir))
        integrity.write_marker(data_dir, str(manifest["store_id"]))
    finally:
        lock.release()
    return {"restored": True, "data_dir": str(data_dir), **manifest}


def check_backup(source: Path) -> dict[str, Any]:
    """The manifest of a sound, complete backup in ``source``; else BackupError."""
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"{source} has no {MANIFEST}: not a backup, or an unfinished one"
        ) from None
    except ValueError as exc:
        raise BackupError(f"{source / MANIFEST} is not JSON: {exc}") from None
    if (manifest.get("kind"), manifest.get("version")) != (KIND, VERSION):
        raise BackupError(f"{source / MANIFEST} is not a version {VERSION} {KIND} manifest")
    if manifest.get("format") != lmdb_format.FORMAT_VERSION.decode():
        raise BackupError(f"the backup's storage format is {manifest.get('format')!r}")
    expected = manifest["files"][DATA]
    copy = source / DATA
    size = copy.stat().st_size if copy.exists() else None
    if size != expected["bytes"] or _sha256(copy) != expected["sha256"]:
        raise BackupError(f"{copy} is not the file the manifest describes (size or SHA-256)")
    report = verify.Report()
    verify.verify_environment(source, report, lock=False)
    problems = [f.message for f in report.findings]
    if report.store_id != manifest["store_id"]:
        problems.append(f"the copy is store {report.store_id}, the manifest says otherwise")
    if report.head_position != manifest["head_position"]:
        problems.append(f"the copy's head is {report.head_position}, not the manifest's")
    if problems:
        raise BackupError(f"the backup fails verify: {'; '.join(problems[:5])}")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
