"""The group-commit writer's consumer checkpoints, in process over a real LMDB
store in a temp dir (the writer's other in-process tests are in test_writer.py;
the daemon-level ones in test_group_commit.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lighthouse_store.config import Durability
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.writer import CommitInfo, GroupCommitWriter


def test_a_lower_pending_checkpoint_never_replaces_a_higher_one(tmp_path: Path) -> None:
    """Two subscriptions of one consumer ack 10 then 5 before the next commit:
    the commit stores 10 (the store alone cannot tell: it has no checkpoint yet)."""
    store = LmdbEventStore(tmp_path, map_size=1 << 20, durability=Durability.ASYNC)
    commits: list[CommitInfo] = []

    async def main() -> None:
        writer = GroupCommitWriter(
            store, max_queue=10, max_queued_bytes=1 << 20, max_batch_appends=10,
            max_batch_bytes=1 << 20, checkpoint_delay=0.01,
        )  # fmt: skip
        committed = asyncio.Event()

        def listener(info: CommitInfo) -> None:
            commits.append(info)
            committed.set()

        writer.add_listener(listener)
        writer.start()
        try:
            # No await in between: both are pending when the flush runs.
            writer.checkpoint("billing", 10)
            writer.checkpoint("billing", 5)
            await asyncio.wait_for(committed.wait(), 30)
        finally:
            await writer.stop()

    try:
        asyncio.run(main())
        assert [info.checkpoints for info in commits] == [{"billing": 10}]
        assert store.get_checkpoint("billing") == 10
    finally:
        store.close()
