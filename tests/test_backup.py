"""``lighthouse-store backup``, ``restore`` and ``stats`` (``backup.py``,
``stats.py``) as an operator runs them, beside real daemons: a backup taken
under appends restores to a store that verifies and serves every event up to
the manifest's head, identical; restore refuses what it must."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from subscriber import Subscriber
from support import DaemonFactory, append, events, get_event, head, new_event, read_all
from test_verify import run_tool, verify

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import lmdb_format


def _tool_json(*args: str, code: int = 0) -> dict[str, Any]:
    proc = run_tool(*args)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout) if code == 0 else {"stderr": proc.stderr}


class Load:
    """Writer threads appending until told to stop: bounded in count and time."""

    def __init__(self, factory_daemon: Any, writers: int = 2, max_appends: int = 3000) -> None:
        self.daemon = factory_daemon
        self.acked = 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(w, max_appends)) for w in range(writers)
        ]
        for t in self.threads:
            t.start()

    def _run(self, writer: int, max_appends: int) -> None:
        stub = self.daemon.stub()
        deadline = time.monotonic() + 120
        try:
            for i in range(max_appends):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                batch = [new_event("Load", b"w%d-%d" % (writer, i) * 20) for _ in range(i % 3 + 1)]
                append(stub, f"load-{writer}-{i % 5}", batch)
                self.acked += 1
        except BaseException as exc:
            self.errors.append(exc)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive()
        assert not self.errors, self.errors


def test_backup_under_load_then_restore_verify_and_serve(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = daemon_factory()
    stub = daemon.stub()
    for i in range(50):
        append(stub, f"pre-{i % 4}", events(10, data=b"%d" % i * 30))
    consumer = Subscriber(stub, pb.SubscribeOptions(from_start={}, consumer="billing"))
    consumer.messages_until(100)
    consumer.ack(100)
    time.sleep(0.3)  # the ack rides with the next commit (--ack-delay-ms 50)
    consumer.close()
    load = Load(daemon)
    try:
        while load.acked < 50 and not load.errors:  # bounded: Load stops within 120 s
            time.sleep(0.01)
        before = load.acked
        manifest = _tool_json(
            "backup", "--data-dir", str(daemon.data_dir), "--to", str(tmp_path / "b")
        )
        during = load.acked - before
    finally:
        load.join()
    assert during > 0, "no append was acknowledged while the backup ran"
    original = read_all(stub)
    assert 500 < manifest["head_position"] < len(original), (manifest, len(original))
    assert (
        manifest["files"]["data.mdb"]["bytes"]
        < lmdb_format.data_file(daemon.data_dir).stat().st_size
    )

    restored_dir = tmp_path / "restored"
    restored = _tool_json("restore", "--from", str(tmp_path / "b"), "--data-dir", str(restored_dir))
    assert restored["restored"] and restored["store_id"] == manifest["store_id"]
    code, report = verify(restored_dir)
    assert code == 0 and report["head_position"] == manifest["head_position"], report
    assert report["store_id"] == manifest["store_id"]

    copy = daemon_factory(restored_dir)
    copy_stub = copy.stub()
    assert head(copy_stub) == manifest["head_position"]
    assert read_all(copy_stub) == original[: manifest["head_position"]]  # every field identical
    for e in original[: manifest["head_position"] : 97]:
        assert get_event(copy_stub, e.event_id) == e
    resumed = Subscriber(copy_stub, pb.SubscribeOptions(consumer="billing"))
    assert resumed.next_kind("confirmation").confirmation.start_after_position == 100
    resumed.close()


def test_restore_refuses_what_it_must(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = daemon_factory()
    append(daemon.stub(), "s", events(20))
    backup = tmp_path / "b"
    _tool_json("backup", "--data-dir", str(daemon.data_dir), "--to", str(backup))
    again = _tool_json("backup", "--data-dir", str(daemon.data_dir), "--to", str(backup), code=1)
    assert "not empty" in again["stderr"]

    # Into a data dir a daemon holds: 3. Over a store: 1. Both leave it alone.
    held = _tool_json("restore", "--from", str(backup), "--data-dir", str(daemon.data_dir), code=3)
    assert "already in use" in held["stderr"]
    assert daemon.stop() == 0
    over = _tool_json("restore", "--from", str(backup), "--data-dir", str(daemon.data_dir), code=1)
    assert "not empty" in over["stderr"]

    damaged = tmp_path / "damaged"
    shutil.copytree(backup, damaged)
    with open(damaged / "data.mdb", "r+b") as f:
        f.seek(9000)
        byte = f.read(1)
        f.seek(9000)
        f.write(bytes([byte[0] ^ 0x01]))
    bad = _tool_json("restore", "--from", str(damaged), "--data-dir", str(tmp_path / "x"), code=1)
    assert "SHA-256" in bad["stderr"]
    assert not (tmp_path / "x").exists() or not (tmp_path / "x" / "lmdb").exists()
    (damaged / "manifest.json").unlink()
    unfinished = _tool_json("restore", "--from", str(damaged), "--data-dir", str(tmp_path / "y"),
                            code=1)  # fmt: skip
    assert "no manifest.json" in unfinished["stderr"]


def test_stats(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    stub = daemon.stub()
    append(stub, "a", events(3, data=b"x" * 500))
    append(stub, "b", events(2))
    written = read_all(stub)
    stats = _tool_json("stats", "--data-dir", str(daemon.data_dir))  # beside the daemon
    assert (stats["head_position"], stats["events"], stats["streams"]) == (5, 5, 2)
    assert stats["consumers"] == 0 and len(stats["store_id"]) == 32
    assert stats["bytes"]["file"] >= stats["bytes"]["used"] > stats["bytes"]["databases"]["log"] > 0
    assert stats["map"]["size"] == 64 << 30 and 0 < stats["map"]["used"] < 0.001
    seconds = [e.recorded_at.ToJsonString() for e in (written[0], written[-1])]
    assert [stats["oldest_record_time"][:19], stats["newest_record_time"][:19]] == [
        s[:19] for s in seconds
    ]
    assert daemon.running()
    empty = _tool_json("stats", "--data-dir", str(daemon.data_dir / "nothing"), code=1)
    assert "holds no store" in empty["stderr"]
