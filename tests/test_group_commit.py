"""Group commit and the bounded queue, seen from outside the daemon.

The daemon runs with ``LIGHTHOUSE_FAULT_COMMIT_PAUSE_MS`` (``faults.py``): after
every commit the writer pauses before answering, as on a slow disk. Appends
sent during the pause queue up, so what the writer does with a queue is
visible without racing the machine's speed. LMDB's own count of write
transactions (``last_txnid``, read through a read-only handle) says how many
commits there were.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import grpc
import pytest
from support import (
    DaemonFactory,
    ThreadErrors,
    append,
    error_info,
    expect_code,
    get_event,
    head,
    new_event,
    read_all,
    run_threads,
)

from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

PAUSE_MS = 1000  # far longer than it takes to send a few appends
APPENDERS = 8


def _paused_env(ms: int = PAUSE_MS) -> dict[str, str]:
    return {**os.environ, COMMIT_PAUSE_MS: str(ms)}


def _wait_for_head(stub: Any, position: int) -> None:
    deadline = time.monotonic() + 30
    while head(stub) < position:
        assert time.monotonic() < deadline, f"head never reached {position}"
        time.sleep(0.01)


def _start_first_append(stub: Any, data: bytes = b"{}") -> tuple[threading.Thread, ThreadErrors]:
    """Append one event on a thread; return once it is durable (head 1), that
    is while the writer pauses before answering it."""
    errors = ThreadErrors()

    def first() -> None:
        try:
            assert append(stub, "first", new_event("First", data)).first_position == 1
        except BaseException as exc:
            errors.add(exc)

    thread = threading.Thread(target=first)
    thread.start()
    _wait_for_head(stub, 1)
    return thread, errors


def _concurrent_appends(d: DaemonProcess) -> int:
    """APPENDERS single-event appends at once, each on its own warm channel,
    sent while the writer pauses; returns the write transactions they took."""
    stubs = [d.stub() for _ in range(APPENDERS + 1)]
    for stub in stubs:
        head(stub)  # connect before anything is timed by the pause
    first, first_errors = _start_first_append(stubs[-1])
    before = d.write_transactions()
    errors = ThreadErrors()

    def appender(i: int) -> None:
        try:
            append(stubs[i], f"g{i}", new_event("Grouped"))
        except BaseException as exc:
            errors.add(exc)

    run_threads(appender, APPENDERS, timeout=60)
    first.join(60)
    errors.raise_first()
    first_errors.raise_first()
    got = read_all(stubs[0])
    assert [e.position for e in got] == list(range(1, APPENDERS + 2))
    return d.write_transactions() - before


def test_appends_queued_during_a_commit_share_the_next_one(
    daemon_factory: DaemonFactory,
) -> None:
    d = daemon_factory(env=_paused_env())
    transactions = _concurrent_appends(d)
    # One for the first append, one for the eight queued behind it; any of them
    # that arrived late would still join the second during that commit's pause.
    assert transactions <= 2, (
        f"{APPENDERS} appends queued during one commit took {transactions - 1} more write "
        "transactions: they were not committed as one group"
    )


def test_without_group_commit_each_append_is_its_own_transaction(
    daemon_factory: DaemonFactory,
) -> None:
    """The control for the test above: the count it relies on does see every
    commit. (A shorter pause: here every append pays it.)"""
    d = daemon_factory(extra_args=["--max-batch-appends", "1"], env=_paused_env(200))
    assert _concurrent_appends(d) == APPENDERS


@pytest.mark.parametrize(
    ("flags", "first_data", "refused_data"),
    [
        # The queue has one place, which the first append holds.
        (["--max-queue", "1"], b"{}", b"{}"),
        # The first append holds 6 KiB of an 8 KiB bound; 4 KiB more does not fit
        # (the count bound, 10,000, is far away).
        (["--max-queued-bytes", "8k", "--max-append-bytes", "8k"], b"x" * 6144, b"y" * 4096),
    ],
    ids=["count", "bytes"],
)
def test_a_full_queue_refuses_at_once_and_writes_nothing(
    daemon_factory: DaemonFactory, flags: list[str], first_data: bytes, refused_data: bytes
) -> None:
    pause_ms = 2 * PAUSE_MS  # the refused call must arrive within it
    d = daemon_factory(extra_args=flags, env=_paused_env(pause_ms))
    stub = d.stub()
    head(stub)
    first, first_errors = _start_first_append(stub, first_data)
    paused_at = time.monotonic()
    refused = new_event("Refused", refused_data)
    # The first append is durable but not yet answered: it still holds its place in the queue.
    sent_after = time.monotonic() - paused_at
    try:
        append(stub, "refused", refused)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert error_info(err).metadata["failure_class"] == "recoverable"
    else:
        raise AssertionError(
            "an append sent while the queue was full went through "
            f"(sent {sent_after:.2f} s into the writer's {pause_ms / 1000:g} s pause)"
        )
    first.join(60)
    first_errors.raise_first()
    assert [e.stream for e in read_all(stub)] == ["first"]
    expect_code(grpc.StatusCode.NOT_FOUND, get_event, stub, refused.event_id)
    # Once the queue has room again, the same append goes through.
    assert append(stub, "refused", refused).first_position == 2
