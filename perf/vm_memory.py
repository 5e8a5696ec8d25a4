"""How fast this machine writes memory it has not touched lately.

    .venv/bin/python perf/vm_memory.py            # about 10 s with the defaults

A diagnostic, not part of the harness. On the dev VM (a Firecracker VM),
writing anonymous memory that has been free for a while runs at about
330 MB/s, against about 1,800 MB/s for memory in use or freed only recently:
most likely the host takes free guest memory back and the first write to
each such page costs a fault in the host. The store meets this whenever the
page cache grows: every new page of ``data.mdb`` (and every zero the
preallocator writes) lands on such memory. In a kernel profile (``perf
record -g``) of a daemon taking 100-event appends, the copy into the page
cache (``copy_folio_from_iter_atomic``) goes from under 1% of the samples to
19% once a gigabyte or so has been written, and the calls slow down by a
fifth; a fresh daemon on a new data dir (its deleted predecessor having just
freed its page cache) starts fast again, while the old one stays slow after a
pause. The evidence points to memory, not the size of the store: a fresh daemon on a new data
dir, started while an earlier daemon's 1.7 GB of data was still on disk and
in the page cache, ran at 52k events/s (p50 1.80 ms), against 62k for the
earlier daemon's own rounds and 65k (p50 1.43 ms) for another fresh daemon
started once both data dirs were deleted (a manual check with the client loop
of ``append_rounds.py``). When ``perf/bench.py`` kept one daemon
and its data for every round, later rounds reported lower batch rates than the
first. Earlier notes blamed a throttled
disk (about 1.3 GB/s for the first ~600 MB of a loop of 1 MiB writes and
fdatasyncs, then about 350 MB/s); that shape fits memory as well, recently
freed memory first and fresh memory after it. The same loop, rerun on a new
file, now runs at a steady ~330 MB/s, which fits either, so it does not
decide; the checks above are what point to memory.

It maps ``--mib`` of anonymous memory and writes it in 64 MiB pieces, three
times: fresh, again at once (now backed), and again after ``--pause``
seconds unmapped. Each line gives MB/s per piece and their median. On the
dev VM the fresh pass runs at ~1,800 MB/s while it reuses recently freed
memory and at ~330 MB/s after that; the second pass at ~1,800 MB/s
throughout; the third depends on how much the host took back meanwhile.
"""

from __future__ import annotations

import argparse
import mmap
import statistics
import time

PIECE = 64 * 1024 * 1024


def write_rates(mib: int) -> list[float]:
    """MB/s of each 64 MiB piece of a fresh ``mib`` MiB anonymous mapping."""
    size = mib * 1024 * 1024
    area = mmap.mmap(-1, size)
    ones = b"\1" * PIECE
    rates: list[float] = []
    try:
        for offset in range(0, size - PIECE + 1, PIECE):
            started = time.perf_counter()
            area[offset : offset + PIECE] = ones
            rates.append(PIECE / 1e6 / (time.perf_counter() - started))
    finally:
        area.close()
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=2048, help="memory to write (default 2048)")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds before the last pass")
    args = parser.parse_args(argv)
    if not 64 <= args.mib <= 16384 or not 0 <= args.pause <= 120:
        parser.error("--mib must be 64..16384 and --pause 0..120")
    for label, pause in (("fresh", 0.0), ("again", 0.0), (f"after {args.pause:g} s", args.pause)):
        time.sleep(pause)
        rates = write_rates(args.mib)
        shown = " ".join(f"{r:,.0f}" for r in rates)
        print(f"{label:>12}: median {statistics.median(rates):,.0f} MB/s  ({shown})")


if __name__ == "__main__":
    main()
