#!/usr/bin/env python3
"""``/health`` latency while the writer is saturated or stuck (issue 16: p99 <= 100 ms).

    .venv/bin/python perf/health_latency.py [--gets 500] [--workers 1,2] [--strict]

For each worker count, on fresh temp dirs (fsync durability), 127.0.0.1 only:

* ``idle``: ``--gets`` GETs of ``/health`` on a daemon doing nothing;
* ``saturated``: the same while 8 appenders (threads in a separate client
  process, single 1 KiB events, as fast as the daemon answers) keep the
  writer busy; bounded by ``--gets`` on this side and by a count and a time
  cap on theirs;
* ``stuck``: a second daemon with the commit-pause fault hook
  (``LIGHTHOUSE_FAULT_COMMIT_PAUSE_MS``, ``faults.py``: every commit is
  followed by a 20 s pause before its callers are answered) and
  ``--writer-stall-seconds 1``. After 8 appends are sent, how long until
  ``/health`` answers 503 with the writer check failing (the stated time is
  the stall setting), then ``--gets`` GETs while it stays stuck.

Each GET opens a new connection, as a probe does. Prints p50/p99/max per
phase; exit 3 with ``--strict`` if a p99 is above 100 ms. Results go to
``perf/RESULTS.md`` by hand, with the command.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

TARGET_MS = 100.0
STALL_S = 1.0
PAUSE_MS = 20_000
APPENDERS = 8
LOAD_CAP_S = 120.0
LOAD_MAX_CALLS = 500_000


def get_health(http: str) -> tuple[int, float]:
    """Status and milliseconds of one GET /health on a new connection."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://{http}/health", timeout=10) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        e.read()
        code = e.code
    return code, (time.perf_counter() - started) * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def probe(http: str, gets: int) -> dict[str, Any]:
    times: list[float] = []
    codes: dict[int, int] = {}
    for _ in range(gets):
        code, ms = get_health(http)
        times.append(ms)
        codes[code] = codes.get(code, 0) + 1
    return {
        "gets": gets,
        "p50_ms": percentile(times, 50),
        "p99_ms": percentile(times, 99),
        "max_ms": max(times),
        "codes": codes,
    }


def _request(stream: str) -> pb.AppendRequest:
    event = pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="Load", data=bytes(1024))
    return pb.AppendRequest(stream=stream, events=[event])


def _appenders(conn: Connection, address: str) -> None:
    """Client process: APPENDERS threads appending until told to stop (bounded)."""
    stop = threading.Event()
    calls = [0] * APPENDERS

    def run(i: int) -> None:
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.EventStoreServiceStub(channel)
        deadline = time.monotonic() + LOAD_CAP_S
        while not stop.is_set() and time.monotonic() < deadline and calls[i] < LOAD_MAX_CALLS:
            stub.Append(_request(f"load-{i}"), timeout=30)
            calls[i] += 1
        channel.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(APPENDERS)]
    for t in threads:
        t.start()
    conn.send("started")
    conn.poll(LOAD_CAP_S)
    stop.set()
    for t in threads:
        t.join(60)
    conn.send(sum(calls))


def saturated(daemon: DaemonProcess, gets: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    loader = ctx.Process(target=_appenders, args=(theirs, daemon.address), daemon=True)
    loader.start()
    try:
        assert ours.poll(60) and ours.recv() == "started"
        time.sleep(1.0)  # the queue fills
        started = time.monotonic()
        result = probe(daemon.http_address, gets)
        seconds = time.monotonic() - started
        ours.send("stop")
        calls = ours.recv() if ours.poll(120) else 0
        result["appends_per_s_during"] = round(calls / (seconds + 1.0))
        return result
    finally:
        loader.join(30)
        if loader.is_alive():
            loader.kill()


def stuck(work: Path, workers: int, gets: int) -> dict[str, Any]:
    env = dict(os.environ, **{COMMIT_PAUSE_MS: str(PAUSE_MS)})
    d = DaemonProcess(
        work / f"stuck-{workers}", workers=workers, env=env, log_path=work / f"stuck-{workers}.log",
        extra_args=["--durability", "fsync", "--writer-stall-seconds", str(STALL_S)],
    )  # fmt: skip
    d.start()
    try:
        stub = d.stub()
        sent = time.monotonic()
        futures = [stub.Append.future(_request(f"s{i}"), timeout=120) for i in range(8)]
        while get_health(d.http_address)[0] != 503:
            if time.monotonic() - sent > PAUSE_MS / 1000:
                raise RuntimeError("the writer check never failed")
            time.sleep(0.005)
        unhealthy_after = time.monotonic() - sent
        result = probe(d.http_address, gets)
        result["unhealthy_after_s"] = round(unhealthy_after, 3)
        result["still_stuck"] = time.monotonic() - sent < PAUSE_MS / 1000
        for f in futures:
            f.cancel()
        return result
    finally:
        d.kill9()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--gets", type=int, default=500, help="GETs per phase (default 500)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--strict", action="store_true", help="exit 3 if a p99 is over 100 ms")
    parser.add_argument("--tmp-dir", type=Path, help="parent of the temp work dir")
    args = parser.parse_args(argv)
    if not 1 <= args.gets <= 100_000:
        parser.error("--gets must be 1..100000")
    counts = [int(c) for c in args.workers.split(",") if c.strip()]
    work = Path(tempfile.mkdtemp(prefix="lighthouse-health-", dir=args.tmp_dir))
    results: dict[str, dict[str, Any]] = {}
    try:
        for workers in counts:
            d = DaemonProcess(
                work / f"daemon-{workers}", workers=workers, log_path=work / f"d-{workers}.log",
                extra_args=["--durability", "fsync"],
            )  # fmt: skip
            d.start()
            try:
                results[f"workers{workers}_idle"] = probe(d.http_address, args.gets)
                results[f"workers{workers}_saturated"] = saturated(d, args.gets)
            finally:
                d.stop()
            results[f"workers{workers}_stuck"] = stuck(work, workers, args.gets)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"/health latency, {args.gets} GETs per phase, a new connection each (target p99"
        f" <= {TARGET_MS:g} ms; stuck: commit pause {PAUSE_MS} ms, stall {STALL_S:g} s)"
    )
    for name, r in results.items():
        extra = ""
        if "unhealthy_after_s" in r:
            extra = f"  503 after {r['unhealthy_after_s']:.3f} s"
        if "appends_per_s_during" in r:
            extra = f"  ~{r['appends_per_s_during']:,} appends/s meanwhile"
        print(f"  {name:<20} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
              f"  max {r['max_ms']:6.2f} ms  codes {r['codes']}{extra}")  # fmt: skip
    print(json.dumps(results))
    over = [n for n, r in results.items() if r["p99_ms"] > TARGET_MS]
    return 3 if args.strict and over else 0


if __name__ == "__main__":
    sys.exit(main())
