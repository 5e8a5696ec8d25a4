#!/usr/bin/env python3
"""Append validation, in-process: what ``validation.append_command`` costs per
append, for appends of several shapes.

    .venv/bin/python perf/validate_bench.py [--appends 40] [--repeat 5]

For each shape (events per append x data bytes per event) it builds
``--appends`` different requests (random UUIDv4 ids, one event type and
content type), then parses and validates each of them ``--repeat`` times in a
row, exactly as the servicer does (``AppendRequest.FromString`` of the bytes
as received, then ``append_command`` with their size), and prints the median
time per append after the first pass, and the first call's time. Each shape
is measured three ways: as the daemon picks (``auto``: through the wire schemas up to
``WIRE_SCHEMA_MAX_BYTES`` as received, event by event past it), always through the
wire schemas, and always event by event, each in a new process (the allocator's
state, which the earlier shapes and ways would leave behind, changes these
numbers by up to 2x). Every loop is bounded by its counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import validation
from lighthouse_store.config import Limits

SHAPES = [(100, 1024), (120, 1024), (300, 1024), (500, 1024), (100, 8192), (100, 65536)]
# The wire size passed to validation; None: the real one.
WAYS = {"auto": None, "schemas": 0, "per event": 1 << 40}


def requests(events: int, data_bytes: int, count: int) -> list[bytes]:
    payload = os.urandom(data_bytes)
    return [
        pb.AppendRequest(
            stream="bench-1",
            events=[
                pb.ProposedEvent(
                    event_id=str(uuid.uuid4()),
                    event_type="BenchEvent",
                    data=payload,
                    content_type="application/octet-stream",
                )
                for _ in range(events)
            ],
        ).SerializeToString()
        for _ in range(count)
    ]


def measure(raws: list[bytes], wire_size: int | None, repeat: int) -> tuple[float, float]:
    """(first call, median of the later passes) in microseconds."""
    limits = Limits(max_event_data_bytes=1 << 20, max_append_bytes=64 << 20)
    times = []
    for _ in range(repeat):
        for raw in raws:
            size = len(raw) if wire_size is None else wire_size
            t = time.perf_counter_ns()
            validation.append_command(pb.AppendRequest.FromString(raw), limits, size)
            times.append(time.perf_counter_ns() - t)
    return times[0] / 1e3, statistics.median(times[len(raws) :]) / 1e3


def one(events: int, data_bytes: int, way: str, appends: int, repeat: int) -> str:
    first, median = measure(requests(events, data_bytes, appends), WAYS[way], repeat)
    return f"{way} {median:7.0f} us (first {first:5.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=40, help="different requests per shape")
    parser.add_argument("--repeat", type=int, default=5, help="passes over them")
    parser.add_argument("--one", nargs=3, metavar=("N", "BYTES", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.appends <= 1000 and 2 <= args.repeat <= 100):
        parser.error("out of range: appends 1..1000, repeat 2..100")
    if args.one:  # one cell, in this new process
        events, data_bytes, way = int(args.one[0]), int(args.one[1]), args.one[2]
        print(one(events, data_bytes, way, args.appends, args.repeat))
        return 0
    limit = validation.WIRE_SCHEMA_MAX_BYTES >> 10
    print(f"wire schemas up to {limit} KiB as received; median per append")
    for events, data_bytes in SHAPES:
        cells = []
        for way in WAYS:
            command = [sys.executable, __file__, "--one", str(events), str(data_bytes), way,
                       "--appends", str(args.appends), "--repeat", str(args.repeat)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
            cells.append(done.stdout.strip())
        size = len(requests(events, data_bytes, 1)[0]) >> 10
        print(f"{events:4d} x {data_bytes:6d} B ({size:5d} KiB)   " + "   ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
