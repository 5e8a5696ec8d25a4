"""``lighthouse-store`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from lighthouse_store import __version__, config, cpus, signals
from lighthouse_store.errors import DataDirLocked, StoreError

EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthouse-store", description="Lighthouse Store, an event-store daemon."
    )
    parser.add_argument("--version", action="version", version=f"lighthouse-store {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    config.add_arguments(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = config.Source.from_args(args)
    try:
        cfg = source.resolve()
    except config.ConfigError as exc:
        print(f"lighthouse-store: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        signals.apply_logging(cfg)
    except OSError as exc:
        print(f"lighthouse-store: cannot open the log file {cfg.log_file}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    signals.ignore_until_installed()
    reloader = signals.Reloader(source.resolve, cfg, report=True)
    # After logging is set up:
    from lighthouse_store.server import BindError, serve
    from lighthouse_store.supervisor import WorkerStartError, supervise
    from lighthouse_store.tracing import exporter_names

    try:
        workers = cpus.worker_count(cfg.workers)
        exporter_names()  # each process sets tracing up; a bad name stops them all here
    except ValueError as exc:  # TracingConfigError among them
        print(f"lighthouse-store: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if workers == 1:
            asyncio.run(serve(cfg, reloader))  # one process, no supervisor
        else:
            return asyncio.run(supervise(cfg, workers, reloader, source))
    except WorkerStartError as exc:  # the worker said why on stderr
        return exc.code if exc.code in (EXIT_USAGE, EXIT_FAILED) else EXIT_FAILED
    except DataDirLocked as exc:
        print(f"lighthouse-store: {exc.message}", file=sys.stderr)
        return EXIT_LOCKED
    except BindError as exc:
        print(f"lighthouse-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:  # storage failure or corruption found at start
        print(f"lighthouse-store: cannot open the store: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the data dir: permissions, a file in its place...
        print(f"lighthouse-store: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
