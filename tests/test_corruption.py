"""The one place corruption is reported (``corruption.py``): every finding
reaches the hooks (the metrics counter, the degradation controller), the log
has one line per kind and position, and a failing hook changes nothing for
the reader."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from test_store_contract import cmd, event

from lighthouse_store import corruption, records
from lighthouse_store.config import Durability
from lighthouse_store.corruption import Finding
from lighthouse_store.errors import Corruption
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import ReadQuery
from lighthouse_store.testing import corrupt_record


def test_every_finding_reaches_the_hooks_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LmdbEventStore(tmp_path, map_size=1 << 24, durability=Durability.ASYNC)
    for _ in range(3):
        store.commit([cmd("s", event(), event())])
    store.close()
    corrupt_record(tmp_path, 2)
    seen: list[Finding] = []

    def broken(finding: Finding) -> None:
        raise RuntimeError("a hook with a bug")

    corruption.add_hook(broken)
    corruption.add_hook(seen.append)
    try:
        with caplog.at_level(logging.ERROR, logger="lighthouse_store"):
            store = LmdbEventStore(tmp_path, map_size=1 << 24, durability=Durability.ASYNC)
            try:
                for _ in range(3):  # the same record, read three times
                    with pytest.raises(Corruption) as err:
                        store.read_page(ReadQuery(start=2), None, 10, 1 << 20)
                    assert err.value.position == 2
            finally:
                store.close()
    finally:
        corruption.remove_hook(broken)
        corruption.remove_hook(seen.append)
    # The start-up check, then three reads: every one reaches the hook.
    assert [(f.what, f.position) for f in seen] == [("checksum", 2)] * 4
    assert seen[0].message == records.checksum_failed(2)
    assert any("a corruption hook failed" in r.getMessage() for r in caplog.records)


def test_the_log_says_each_kind_and_position_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="lighthouse_store.corruption"):
        for _ in range(3):
            corruption.found(corruption.CHECKSUM, 987_654_321, "a test finding")
        corruption.found(corruption.MISSING, 987_654_321, "another kind")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["corruption found: a test finding", "corruption found: another kind"]
