"""``lighthouse-store`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from lighthouse_store import __version__, config, cpus, logs
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
    try:
        cfg = config.from_args(args)
    except config.ConfigError as exc:
        print(f"lighthouse-store: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(cfg.log_level.value)
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
            asyncio.run(serve(cfg))  # one process, no supervisor
        else:
            return asyncio.run(supervise(cfg, workers))
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
