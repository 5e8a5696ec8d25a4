"""A large replay streams from storage: server memory does not grow with its size."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from support import RPC_TIMEOUT, ThreadErrors, head, new_id, rss_anon_kib, run_threads

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

TOTAL = 100_000
BATCH = 1_000
DATA_BYTES = 1_024


def payload(i: int) -> bytes:
    # ~1 KiB, distinct per event, cheap to regenerate for checking.
    return (f"{i:010d}".encode() * (DATA_BYTES // 10 + 1))[:DATA_BYTES]


def fill(daemon: DaemonProcess) -> None:
    """Append TOTAL events in batches of BATCH from 2 threads (disjoint streams)."""
    errors = ThreadErrors()

    def writer(t: int) -> None:
        stub = daemon.stub()
        try:
            for b in range(t, TOTAL // BATCH, 2):
                evs = [
                    pb.ProposedEvent(
                        event_id=new_id(), event_type="Replay", data=payload(b * BATCH + k)
                    )
                    for k in range(BATCH)
                ]
                stub.Append(
                    pb.AppendRequest(stream=f"replay-{b % 10}", events=evs), timeout=RPC_TIMEOUT
                )
        except BaseException as exc:
            errors.add(exc)

    run_threads(writer, 2, 240)
    errors.raise_first()


@pytest.mark.slow
def test_replay_100k_does_not_buffer_whole_result(daemon: DaemonProcess) -> None:
    fill(daemon)
    assert head(daemon.stub()) == TOTAL
    # A fresh process, so the appends' freed memory cannot hide the read's.
    assert daemon.stop() == 0
    daemon.start()
    stub: Any = daemon.stub()
    pid = daemon.pid
    # Warm up the read path (code, caches, thread pools) before the baseline.
    warm = [e for p in stub.Read(pb.ReadRequest(stream="$all", max_count=2000)) for e in p.events]
    assert len(warm) == 2000
    time.sleep(0.5)
    baseline = rss_anon_kib(pid)

    samples: list[int] = []
    sampling = threading.Event()
    sampling.set()

    def sampler() -> None:
        while sampling.is_set():
            try:
                samples.append(rss_anon_kib(pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.02)

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    try:
        it = iter(stub.Read(pb.ReadRequest(stream="$all"), timeout=300))
        first = next(it)
        received = list(first.events)
        # A slow consumer: if the server materialised the whole replay (or kept
        # producing into an unbounded buffer), it would do so now.
        time.sleep(1.0)
        samples.append(rss_anon_kib(pid))
        pages = 1
        for page in it:
            received.extend(page.events)
            pages += 1
            if pages <= 20:
                time.sleep(0.05)
    finally:
        sampling.clear()
        sampler_thread.join(10)
    samples.append(rss_anon_kib(pid))

    # Everything came back, in order, intact.
    assert len(received) == TOTAL
    assert [e.position for e in received] == list(range(1, TOTAL + 1))
    by_stream: dict[str, int] = {}
    for e in received:
        assert e.revision == by_stream.get(e.stream, 0)
        by_stream[e.stream] = e.revision + 1
        assert len(e.data) == DATA_BYTES
    datas = {e.data for e in received}
    assert len(datas) == TOTAL
    assert datas == {payload(i) for i in range(TOTAL)}

    total_kib = TOTAL * DATA_BYTES // 1024  # ~100 MB of payload alone
    growth = max(samples) - baseline
    assert growth < 0.4 * total_kib, (
        f"daemon anonymous memory grew by {growth} KiB during a replay of "
        f"{total_kib} KiB (baseline {baseline} KiB, peak {max(samples)} KiB)"
    )
    assert daemon.stop() == 0
