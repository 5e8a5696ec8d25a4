"""The command line against real daemons: a config file sets what it says, and a
setting the daemon cannot use stops it at once, in one line, with status 2."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from subscriber import Subscriber
from support import DaemonFactory, append, events, info, read_pages

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import config
from lighthouse_store.settings import Size
from lighthouse_store.testing import DaemonProcess


def run_daemon(tmp_path: Path, args: Sequence[str], **env: str) -> subprocess.CompletedProcess[str]:
    """Start a daemon that should not get as far as serving; return how it ended."""
    data_dir = tmp_path / "d"
    data_dir.mkdir(exist_ok=True)
    return subprocess.run(
        [*DaemonProcess(data_dir).command(), *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )  # fmt: skip


BAD_FILE = "bad.toml"  # written by the test below, relative to tmp_path


@pytest.mark.parametrize(
    ("args", "env", "file", "expected"),
    [
        (["--map-size", "1"], {}, None, "--map-size: must be at least 1MiB, got '1'"),
        (["--map-size", "4096"], {}, None, "--map-size: must be at least 1MiB, got '4096'"),
        (["--data-dir", ""], {}, None, "--data-dir: must not be empty"),
        ([], {"LIGHTHOUSE_READER_THREADS": "65"}, None,
         "LIGHTHOUSE_READER_THREADS: must be at most 64, got '65'"),
        (["--config", BAD_FILE], {}, "map_size = [", f"{BAD_FILE}: not a valid TOML file: "),
        (["--config", BAD_FILE], {}, "mapsize = '1GiB'",
         f"{BAD_FILE}: unknown setting 'mapsize' (did you mean 'map_size'?)"),
        (["--config", BAD_FILE], {}, "page_events = 0",
         f"{BAD_FILE}: page_events: must be at least 1, got 0"),
        (["--config", "missing.toml"], {}, None, "missing.toml: cannot read the file: "),
    ],
    ids=["map-size-1", "map-size-4096", "empty-data-dir", "env-bounds", "not-toml",
         "unknown-key", "file-bounds", "no-file"],
)  # fmt: skip
def test_a_bad_setting_stops_the_daemon_with_one_line_naming_its_source(
    tmp_path: Path, args: list[str], env: dict[str, str], file: str | None, expected: str
) -> None:
    if file is not None:
        (tmp_path / BAD_FILE).write_text(file + "\n")
    args = [str(tmp_path / a) if a in (BAD_FILE, "missing.toml") else a for a in args]
    expected = expected.replace(BAD_FILE, str(tmp_path / BAD_FILE))
    expected = expected.replace("missing.toml", str(tmp_path / "missing.toml"))
    proc = run_daemon(tmp_path, args, **env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert '"ready"' not in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"lighthouse-store: bad configuration: {expected}"), line


def test_an_empty_data_dir_never_puts_a_store_in_the_working_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [*DaemonProcess(tmp_path / "unused").command(), "--data-dir", ""],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert list(cwd.iterdir()) == []


def test_a_daemon_takes_its_settings_from_the_config_file(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    path = tmp_path / "lighthouse.toml"
    path.write_text(
        'max_event_data_bytes = "2KiB"\n'
        "max_events_per_append = 7\n"
        "max_metadata_entries = 5\n"
        'log_level = "warning"\n'
        "page_events = 2\n"
        "subscribe_page_events = 3\n"
    )
    d = daemon_factory(
        extra_args=["--config", str(path), "--max-metadata-entries", "6"],
        env=dict(os.environ, LIGHTHOUSE_MAX_EVENTS_PER_APPEND="8"),
    )
    stub = d.stub()
    limits = info(stub).limits
    assert limits.max_event_data_bytes == 2048  # from the file
    assert limits.max_events_per_append == 8  # the variable beats the file
    assert limits.max_metadata_entries == 6  # the flag beats the file
    assert limits.max_append_bytes == config.Limits().max_append_bytes  # the default
    append(stub, "s", events(5))
    pages = read_pages(stub, pb.ReadRequest(stream="$all"))
    assert [len(p.events) for p in pages] == [2, 2, 1]  # page_events reaches Read
    sub = Subscriber(stub, pb.SubscribeOptions(from_start=empty_pb2.Empty()))
    try:
        got = [len(sub.next_kind("events").events.events) for _ in range(2)]
    finally:
        sub.close()
    assert got == [3, 2]  # subscribe_page_events reaches the sessions
    assert '"level": "info"' not in d.log_text()  # log_level = "warning"


def test_the_smallest_map_size_serves(daemon_factory: DaemonFactory) -> None:
    (map_size,) = [s for s in config.TABLE if s.name == "map_size"]
    assert isinstance(map_size.kind, Size)
    d = daemon_factory(extra_args=["--map-size", map_size.kind.show(map_size.kind.low)])
    stub = d.stub()
    assert append(stub, "s", events(50, data=b"x" * 1000)).last_position == 50
    assert sum(len(p.events) for p in read_pages(stub, pb.ReadRequest(stream="$all"))) == 50


def test_the_ack_delay_reaches_the_writer(daemon_factory: DaemonFactory) -> None:
    """With a long --ack-delay-ms an ack waits for the next append's commit
    (with the default 50 ms it would be stored on its own well within 1 s)."""
    d = daemon_factory(extra_args=["--ack-delay-ms", "10000"])
    stub = d.stub()
    append(stub, "s", events(2))
    sub = Subscriber(stub, pb.SubscribeOptions(from_start=empty_pb2.Empty(), consumer="c1"))
    try:
        sub.messages_until(2)
        sub.ack(2)
        quiet = sub.quiet_for(1.5)
        assert not [m for m in quiet if m.WhichOneof("kind") == "checkpoint_stored_position"]
        append(stub, "s", events(1))
        assert sub.next_kind("checkpoint_stored_position").checkpoint_stored_position == 2
    finally:
        sub.close()


def test_a_log_file_that_cannot_be_opened_stops_the_daemon_in_one_line(tmp_path: Path) -> None:
    done = run_daemon(tmp_path, ["--log-file", "no-such-dir/store.log"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "lighthouse-store: cannot open the log file no-such-dir/store.log:"
        " No such file or directory"
    ]
