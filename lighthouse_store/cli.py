"""``lighthouse-store`` command line: ``serve``, and the operator's tools.

The tools work on a data dir's files directly (README, "Operations"):
``verify``, ``stats`` and ``backup`` read it as LMDB readers, beside a
running daemon or without one, and take no lock; ``repair`` and ``restore``
write it and take the data dir's lock, so they refuse to run while a daemon
(or another tool) holds it. Each prints one JSON document on stdout.

Exit status, for every command:

===  ==========================================================================
0    done; for ``verify``, the store is clean
1    a failure, or for ``verify`` findings (the report says which)
2    a usage error: a bad flag or setting, an address ``serve`` cannot bind
3    the data dir is held by another daemon or tool (the message names its pid)
4    the store is damaged beyond what it can start with: a truncated
     ``data.mdb``, a missing or empty one beside a known store, another
     store's file (``integrity.py``)
===  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lighthouse_store import __version__, config, cpus, logs, signals, transport
from lighthouse_store.errors import DataDirLocked, StoreDamaged, StoreError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_DAMAGED = 4

Command = Callable[[argparse.Namespace, config.Config], int]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lighthouse-store", description="Lighthouse Store, an event-store daemon."
    )
    parser.add_argument("--version", action="version", version=f"lighthouse-store {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon")
    config.add_arguments(serve)
    _tool(
        sub,
        "verify",
        _verify,
        "check every record and index of a store (offline, or beside a running daemon)",
    )
    repair = _tool(
        sub, "repair", _repair, "rebuild every index from the log (the daemon must be stopped)"
    )
    repair.add_argument(
        "--quarantine",
        metavar="POSITION",
        type=int,
        action="append",
        default=[],
        help="replace the unreadable record at POSITION by a $corrupted placeholder, after "
        "saving its bytes in <data-dir>/quarantine/ (repeat for several)",
    )
    backup = _tool(
        sub, "backup", _backup, "copy a store consistently (compacted), even while the daemon runs"
    )
    backup.add_argument(
        "--to",
        metavar="DIR",
        type=Path,
        required=True,
        help="a new or empty directory for the copy and its manifest",
    )
    restore = _tool(
        sub, "restore", _restore, "verify a backup, then install it in an empty data dir"
    )
    restore.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        type=Path,
        required=True,
        help="a directory made by lighthouse-store backup",
    )
    _tool(sub, "stats", _stats,
          "streams, events, bytes, map use, oldest and newest record time")  # fmt: skip
    admin = _tool(
        sub, "admin", _admin,
        "ask a running daemon (AdminService) to degrade, recover, or say its degradation status",
    )  # fmt: skip
    admin.add_argument("action", choices=("degrade", "recover", "status"))
    admin.add_argument("--reason", default="", help="why (recorded in $system); needed to"
                       " degrade or recover")  # fmt: skip
    admin.add_argument("--level", choices=("warning", "degraded"), default="degraded",
                       help="the level degrade forces (default: degraded)")  # fmt: skip
    admin.add_argument("--address", default=None,
                       help="host:port of the daemon [its --listen setting]")  # fmt: skip
    admin.add_argument("--token", default=os.environ.get("LIGHTHOUSE_TOKEN", ""),
                       help="bearer token of an admin principal [LIGHTHOUSE_TOKEN]")  # fmt: skip
    admin.add_argument("--tls-ca", default="", metavar="PEM",
                       help="CA of the daemon's certificate: connect with TLS")  # fmt: skip
    admin.add_argument("--tls-cert", default="", metavar="PEM",
                       help="client certificate (mTLS), with --tls-key")  # fmt: skip
    admin.add_argument("--tls-key", default="", metavar="PEM", help="its private key")
    token = sub.add_parser(
        "token", help="make a new bearer token and the line for --tokens-file",
        description="Print a new random bearer token (give it to the client, once) and its"
        " SHA-256, the only thing the tokens file keeps.",
    )  # fmt: skip
    token.add_argument("principal", help="the principal's name in the tokens file")
    token.set_defaults(run=_token)
    return parser


def _tool(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, run: Command, text: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text)
    parser.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help="the data directory [LIGHTHOUSE_DATA_DIR, the config file, or ./data]",
    )  # fmt: skip
    parser.add_argument(
        config.CONFIG_FLAG,
        metavar="FILE",
        default=None,
        help=f"the daemon's TOML settings, for its data_dir [{config.CONFIG_ENV}]",
    )
    parser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = config.Source.from_args(args)
    try:
        cfg = source.resolve()
    except config.ConfigError as exc:
        print(f"lighthouse-store: bad configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command != "serve":
        logs.configure("WARNING")
    try:
        if args.command == "serve":
            try:
                transport.check_serving(cfg)
            except config.ConfigError as exc:
                print(f"lighthouse-store: bad configuration: {exc}", file=sys.stderr)
                return EXIT_USAGE
            return _serve(source, cfg)
        tool: Command = args.run
        return tool(args, cfg)
    except DataDirLocked as exc:
        print(f"lighthouse-store: {exc.message}", file=sys.stderr)
        return EXIT_LOCKED
    except StoreDamaged as exc:
        print(f"lighthouse-store: the store is damaged: {exc.message}", file=sys.stderr)
        return EXIT_DAMAGED
    except StoreError as exc:  # storage failure or corruption found at start
        print(f"lighthouse-store: cannot open the store: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the data dir: permissions, a file in its place...
        print(f"lighthouse-store: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _serve(source: config.Source, cfg: config.Config) -> int:
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
        return exc.code if exc.code in (EXIT_USAGE, EXIT_FAILED, EXIT_DAMAGED) else EXIT_FAILED
    except BindError as exc:
        print(f"lighthouse-store: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _verify(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import verify

    return verify.main(cfg.data_dir)


def _repair(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import repair

    return repair.main(cfg.data_dir, args.quarantine)


def _backup(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import backup

    return backup.backup_main(cfg.data_dir, args.to)


def _restore(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import backup

    return backup.restore_main(args.source, cfg.data_dir)


def _admin(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import admin

    tls = (args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca else None
    return admin.main(args.address or cfg.listen, args.action, args.reason, args.level,
                      token=args.token, tls=tls)  # fmt: skip


def _token(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import access

    token, digest = access.new_token()
    print(f"token (give it to the client; it is not stored): {token}")
    print("tokens file:")
    print(f"[principals.{json.dumps(args.principal)}]")
    print(f'token_sha256 = "{digest}"')
    print('grants = [{ prefix = "", roles = ["read"] }]')
    return 0


def _stats(args: argparse.Namespace, cfg: config.Config) -> int:
    from lighthouse_store import stats

    return stats.main(cfg.data_dir)
