#!/usr/bin/env python3
"""Monitoring overhead counted in instructions: the daemon under callgrind.

    .venv/bin/python perf/metrics_instructions.py [--appends 200] [--extra 400] [--repeat 2]

Why instructions: on this shared 2-core machine the time ratio of ``--metrics
on`` over ``off`` swings by 5-10% between rounds of the same run
(perf/RESULTS.md), while the overhead to show is under 2%. Callgrind counts
the instructions every thread of the daemon executes (Python, gRPC's core,
LMDB), and that count does not depend on what else the machine is doing.

Method: for ``--metrics off`` and ``on``, in turns, start ``lighthouse-store
serve --workers 1`` (the one-process daemon; a worker pays the same code
plus prometheus-client's multiprocess file writes, which
``perf/metrics_cost.py`` measures) under ``valgrind --tool=callgrind``, make
``--appends`` single-event appends through the generated stub (the client
runs outside valgrind), then SIGTERM; again with ``--appends + --extra``.
The difference of the two totals over ``--extra`` is the daemon's marginal
instructions per append: start-up and shutdown cancel out. The overhead is
on / off - 1, and the harness's target (SPEC §6) is below 2%.

Instructions are not seconds (a cache miss costs more than an add), so this
is the CPU work the metrics add, not their exact share of wall time; the
time ratio is ``./dev perf --compare-metrics`` on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

VENV_BIN = Path(sys.executable).parent
_COLLECTED = re.compile(r"Collected : (\d+)")
START_TIMEOUT_S = 300.0  # Python and gRPC start ~50x slower under callgrind
CALL_TIMEOUT_S = 30.0


def instructions(metrics: str, appends: int, work: Path, idle: float = 0.0) -> tuple[int, float]:
    """The daemon's total instructions for start-up, ``appends`` appends, ``idle``
    seconds of nothing, and shutdown; and the seconds the appends took."""
    data_dir = Path(tempfile.mkdtemp(prefix="store-", dir=work))
    out = work / f"callgrind-{uuid.uuid4().hex}.out"
    daemon = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         str(VENV_BIN / "lighthouse-store"), "serve", "--workers=1", f"--metrics={metrics}",
         f"--data-dir={data_dir}", "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0",
         "--durability=fsync", "--preallocate=0", "--map-size=256MiB",
         "--max-map-size=256MiB", "--log-level=warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        address = ""
        while not address and time.monotonic() < deadline:
            line = daemon.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                address = json.loads(line).get("address", "")
        if not address:
            raise RuntimeError("the daemon did not start under callgrind")
        started = time.monotonic()
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.EventStoreServiceStub(channel)
            for i in range(appends):
                event = pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="Measured",
                                         data=b"x" * 1024, content_type="application/octet-stream")
                request = pb.AppendRequest(stream=f"s-{i % 10}", events=[event])
                stub.Append(request, timeout=CALL_TIMEOUT_S)
        elapsed = time.monotonic() - started
        time.sleep(idle)
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=START_TIMEOUT_S)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    found = _COLLECTED.findall(stderr)
    if not found:
        raise RuntimeError(f"no instruction count in callgrind's output: {stderr[-500:]}")
    out.unlink(missing_ok=True)
    return sum(int(n) for n in found), elapsed  # one line per process: only the daemon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--extra", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args(argv)
    if not (1 <= args.appends <= 10_000 and 1 <= args.extra <= 10_000 and 1 <= args.repeat <= 10):
        parser.error("--appends and --extra 1..10000, --repeat 1..10")
    per_append: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="lighthouse-metrics-ir-") as tmp:
        work = Path(tmp)
        for r in range(args.repeat):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for metrics in order:
                base, base_s = instructions(metrics, args.appends, work)
                more, more_s = instructions(metrics, args.appends + args.extra, work)
                idle, _ = instructions(metrics, args.appends, work, idle=args.idle)
                background = max(0.0, (idle - base) / args.idle)  # per second, doing nothing
                marginal = more - base - background * (more_s - base_s)
                per_append[metrics].append(marginal / args.extra)
                print(f"[round {r + 1}] metrics {metrics}: background {background:,.0f}/s,"
                      f" {(more_s - base_s) / args.extra * 1e3:.1f} ms per append",
                      flush=True)
                print(f"[round {r + 1}] metrics {metrics}: {per_append[metrics][-1]:,.0f}"
                      " instructions per append", flush=True)  # fmt: skip
    off, on = statistics.median(per_append["off"]), statistics.median(per_append["on"])
    ratio = on / off
    print(f"daemon instructions per single-event append (median of {args.repeat}):")
    print(f"  metrics off {off:12,.0f}")
    print(f"  metrics on  {on:12,.0f}")
    print(f"  on / off    {ratio:12.4f}   [{'PASS' if ratio <= 1.02 else 'FAIL'}: overhead <= 2%]")
    print(json.dumps({"off": per_append["off"], "on": per_append["on"], "ratio": ratio}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
