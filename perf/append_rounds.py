"""One sequential client appending, round after round, to daemons run with
different flags: an A/B of a daemon setting on the path of a single writer.

    .venv/bin/python perf/append_rounds.py --config= --config=--preallocate=0
    .venv/bin/python perf/append_rounds.py --source=. --source=/tmp/old --events 1

For each repeat, for each ``--source`` (a checkout whose ``lighthouse_store``
the daemon runs: it starts there, and ``python -m`` looks there first;
``--source=.`` is this one, and the default), for each ``--config`` (extra
daemon flags, split on spaces), it starts a daemon on a new data dir in fsync
durability, makes 100 warm-up calls, then ``--rounds`` rounds of ``--calls``
appends of ``--events`` 1 KiB events each from one synchronous client (the
harness's own, ``workloads.SyncClient``), stops the daemon by its PID and
deletes its data. Configs alternate, in an order that flips each repeat, so a
machine that changes speed meanwhile hurts each alike. Per round it prints the
rate (events over the round's wall time, so slow calls count), p50 and p99 per
call; then the median round.

Rounds are kept apart because a long write load changes this machine as it
goes (``vm_memory.py``): the last rounds of a run show it. Every round is
bounded by ``--calls`` and by ``--round-cap`` seconds (plus the call in
flight, which has a 30 s deadline, as each warm-up call has).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import report
from workloads import Result, Spec, SyncClient

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess


def one_config(work: Path, source: Path, flags: list[str], args: argparse.Namespace) -> str:
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    daemon = DaemonProcess(data, extra_args=["--durability", "fsync", *flags], cwd=source)
    daemon.start()
    version = daemon.stub().GetInfo(pb.GetInfoRequest(), timeout=10).server_version
    rates: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    try:
        spec = Spec(
            "append",
            daemon.address,
            duration_s=args.round_cap,
            max_calls=args.calls,
            warmup_calls=100,
            events_per_call=args.events,
        )
        client = SyncClient(spec, 0)  # the harness's own client loop
        try:
            client.warmup()
            for _ in range(args.rounds):
                client.result = res = Result()
                client.run(time.monotonic_ns())
                if res.errors:
                    raise RuntimeError(f"{res.errors} failed calls; first: {res.first_error}")
                rates.append(res.events / ((res.end_ns - res.start_ns) / 1e9))
                p50s.append(report.percentile(res.latencies_ns, 50) / 1e6)
                p99s.append(report.percentile(res.latencies_ns, 99) / 1e6)
        finally:
            client.close()
    except Exception:
        print(f"daemon log tail:\n{daemon.log_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        code = daemon.stop()
        if code != 0:
            print(f"the daemon exited with status {code}", file=sys.stderr)
        shutil.rmtree(data, ignore_errors=True)
    per_round = " ".join(
        f"{r:,.0f}/{a:.2f}/{b:.2f}" for r, a, b in zip(rates, p50s, p99s, strict=True)
    )
    return (
        f"(version {version}) median round {statistics.median(rates):,.0f} ev/s, "
        f"p50 {statistics.median(p50s):.3f} ms, p99 {statistics.median(p99s):.2f} ms"
        f"   rounds (rate/p50/p99): {per_round}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FLAGS",
        help="extra daemon flags: --config=--preallocate=0 (--config= for the defaults)",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a checkout whose daemon code to run (default: this one)",
    )
    parser.add_argument("--events", type=int, default=100, help="events per append")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1500, help="appends per round")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every config")
    parser.add_argument("--round-cap", type=float, default=30.0, help="seconds per round, at most")
    args = parser.parse_args(argv)
    configs = args.config or [""]
    here = Path(__file__).resolve().parent.parent
    sources = [s.resolve() for s in args.source] or [here]
    for source in sources:
        if not (source / "lighthouse_store" / "__init__.py").is_file():
            parser.error(f"--source {source}: no lighthouse_store package there")
    if not (
        1 <= args.events <= 1000
        and 1 <= args.rounds <= 50
        and 1 <= args.calls <= 100_000
        and 1 <= args.repeat <= 10
        and 0 < args.round_cap <= 120
    ):
        parser.error(
            "out of range: events 1..1000, rounds 1..50, calls 1..100000, "
            "repeat 1..10, round-cap 0..120"
        )
    with tempfile.TemporaryDirectory(prefix="lighthouse-rounds-") as tmp:
        cells = [(source, flags) for source in sources for flags in configs]
        for i in range(args.repeat):
            # The order flips each repeat, so no cell always runs first.
            for source, flags in cells if i % 2 == 0 else cells[::-1]:
                line = one_config(Path(tmp), source, flags.split(), args)
                label = flags or "defaults"
                if len(sources) > 1:
                    label = f"{source} {label}"
                print(f"run {i + 1} [{label}] {line}", flush=True)


if __name__ == "__main__":
    main()
