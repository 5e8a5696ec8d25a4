"""The group-commit writer in process, on a real LMDB store: what its commit
listeners hear (``CommitInfo``), which is where metrics read commit timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from test_store_contract import cmd

from lighthouse_store.config import Durability
from lighthouse_store.errors import StoreError
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.store import AppendCommand, AppendResult
from lighthouse_store.writer import CommitInfo, GroupCommitWriter

SLOW_S = 0.05


class SlowStore(LmdbEventStore):
    """Every commit takes SLOW_S longer, as on a slow disk."""

    def commit(
        self, commands: Sequence[AppendCommand], checkpoints: Mapping[str, int] | None = None
    ) -> list[AppendResult | StoreError]:
        time.sleep(SLOW_S)
        return super().commit(commands, checkpoints)


def test_listeners_hear_each_commit_s_duration_size_and_head(tmp_path: Path) -> None:
    store = SlowStore(tmp_path, map_size=1 << 24, durability=Durability.FSYNC)
    heard: list[CommitInfo] = []

    async def run() -> list[AppendResult]:
        writer = GroupCommitWriter(
            store, max_queue=100, max_queued_bytes=1 << 20, max_batch_appends=100,
            max_batch_bytes=1 << 20, checkpoint_delay=0.01,
        )  # fmt: skip
        writer.add_listener(heard.append)
        writer.start()
        results = await asyncio.gather(*(writer.append(cmd(f"s{i}")) for i in range(5)))
        await writer.stop()
        return results

    try:
        results = asyncio.run(run())
    finally:
        store.close()
    assert sorted(r.last_position for r in results) == [1, 2, 3, 4, 5]
    assert sum(info.appends for info in heard) == 5
    assert heard[-1].head == 5
    assert all(SLOW_S <= info.seconds < 10 for info in heard), heard
