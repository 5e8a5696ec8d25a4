"""Daemon configuration: defaults, ``LIGHTHOUSE_*`` environment variables, flags.

Precedence: command-line flag > environment variable > default. Every tunable
is here so that tests can shrink it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path

from lighthouse_proto.limits import Limits as Limits  # the shared defaults (SPEC §2)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
# Default budget of the in-memory tail of recent records (lmdb_store._Tail):
# subscribers and reads near the head are served from it without LMDB.
TAIL_BYTES = 16 * MIB


class Durability(StrEnum):
    FSYNC = "fsync"  # every acknowledged append is fsynced (LMDB sync commit)
    ASYNC = "async"  # commits are not fsynced; survives a process crash, not a power cut


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("data")
    durability: Durability = Durability.FSYNC
    # LMDB map size: the most the store can hold. Virtual address space only;
    # the file grows as data is written.
    map_size: int = 64 * GIB
    # Space kept zero-filled past LMDB's used size in data.mdb (prealloc.py); 0 = off.
    preallocate: int = 64 * MIB
    # Memory kept for the newest records, so subscribers near the head read
    # from memory; 0 = off (every read goes to LMDB).
    tail_bytes: int = TAIL_BYTES
    limits: Limits = field(default_factory=Limits)
    # Group commit: appends queued beyond max_queue, or beyond max_queued_bytes
    # of events, fail at once with RESOURCE_EXHAUSTED (a queued append holds
    # about twice its events' bytes: the request as gRPC received it, and the
    # events); one transaction takes at most max_batch_appends appends or
    # max_batch_bytes bytes.
    max_queue: int = 10_000
    max_queued_bytes: int = 256 * MIB
    max_batch_appends: int = 1_000
    max_batch_bytes: int = 64 * MIB
    # Reads: one page (ReadResponse) holds at most this many events / bytes.
    page_events: int = 1_000
    page_bytes: int = 1 * MIB
    reader_threads: int = 4
    # SIGTERM: how long in-flight RPCs get to finish once the writer is quiet
    # (or 2 s have passed); then gRPC cancels what is left.
    shutdown_grace_seconds: float = 10.0


# name: (env var, help). Limits are flattened into the same namespace.
_SETTINGS: dict[str, tuple[str, str]] = {
    "listen": ("LIGHTHOUSE_LISTEN", "host:port to listen on (default 127.0.0.1:50051)"),
    "data_dir": ("LIGHTHOUSE_DATA_DIR", "data directory (default ./data)"),
    "durability": ("LIGHTHOUSE_DURABILITY", "fsync (default) or async"),
    "map_size": ("LIGHTHOUSE_MAP_SIZE", "LMDB map size in bytes (default 64 GiB)"),
    "preallocate": (
        "LIGHTHOUSE_PREALLOCATE",
        "bytes kept zero-filled past the store's used size in data.mdb (default 64 MiB; 0 = off)",
    ),
    "tail_bytes": (
        "LIGHTHOUSE_TAIL_BYTES",
        "memory kept for the newest records, read by subscribers near the head"
        " (default 16 MiB; 0 = off)",
    ),
    "max_queue": ("LIGHTHOUSE_MAX_QUEUE", "queued appends before RESOURCE_EXHAUSTED"),
    "max_queued_bytes": (
        "LIGHTHOUSE_MAX_QUEUED_BYTES",
        "bytes of events queued before RESOURCE_EXHAUSTED (default 256 MiB)",
    ),
    "max_batch_appends": (
        "LIGHTHOUSE_MAX_BATCH_APPENDS",
        "most appends grouped into one transaction and fsync (1 turns group commit off)",
    ),
    "shutdown_grace_seconds": (
        "LIGHTHOUSE_SHUTDOWN_GRACE_SECONDS",
        "on SIGTERM/SIGINT, seconds in-flight calls get to finish (default 10)",
    ),
    "max_event_data_bytes": ("LIGHTHOUSE_MAX_EVENT_DATA_BYTES", "max data bytes per event"),
    "max_events_per_append": ("LIGHTHOUSE_MAX_EVENTS_PER_APPEND", "max events per append"),
    "max_append_bytes": ("LIGHTHOUSE_MAX_APPEND_BYTES", "max bytes per append"),
    "max_metadata_entries": ("LIGHTHOUSE_MAX_METADATA_ENTRIES", "max metadata entries"),
    "max_metadata_bytes": ("LIGHTHOUSE_MAX_METADATA_BYTES", "max metadata bytes per event"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, (env, help_text) in _SETTINGS.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, help=f"{help_text} [{env}]"
        )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed flags, falling back to the environment."""
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    where: dict[str, str] = {}  # what set each value, as errors name it: a flag or a variable
    for name, (var, _) in _SETTINGS.items():
        value = getattr(args, name, None)
        where[name] = "--" + name.replace("_", "-")
        if value is None:
            value, where[name] = env.get(var), var
        if value is not None:
            raw[name] = value
    try:
        limit_names = {f.name for f in fields(Limits)}
        limits = Limits(**{k: _size(where[k], v) for k, v in raw.items() if k in limit_names})
        kwargs: dict[str, object] = {"limits": limits}
        if "listen" in raw:
            kwargs["listen"] = _listen(where["listen"], raw["listen"])
        if "data_dir" in raw:
            kwargs["data_dir"] = Path(raw["data_dir"])
        if "durability" in raw:
            kwargs["durability"] = _durability(where["durability"], raw["durability"])
        for name in ("map_size", "max_queue", "max_queued_bytes", "max_batch_appends"):
            if name in raw:
                kwargs[name] = _size(where[name], raw[name])
        for name in ("preallocate", "tail_bytes"):
            if name in raw:
                kwargs[name] = _size(where[name], raw[name], allow_zero=True)
        if "shutdown_grace_seconds" in raw:
            kwargs["shutdown_grace_seconds"] = _seconds(
                where["shutdown_grace_seconds"], raw["shutdown_grace_seconds"]
            )
        cfg = Config(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # An append bigger than the queue's byte bound could never be queued, and
    # its caller would retry a RESOURCE_EXHAUSTED forever.
    if cfg.max_queued_bytes < cfg.limits.max_append_bytes:
        raise ConfigError(
            f"{where['max_queued_bytes']} ({cfg.max_queued_bytes}) must be at least"
            f" {where['max_append_bytes']} ({cfg.limits.max_append_bytes})"
        )
    return cfg


class ConfigError(ValueError):
    """A setting has a value the daemon cannot use."""


_SUFFIXES = {"k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}


def _size(name: str, text: str, *, allow_zero: bool = False) -> int:
    """Parse '4096', '64k', '1M', '64GiB' into a positive (or zero) int."""
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = 1
    if s and s[-1] in _SUFFIXES:
        mult = _SUFFIXES[s[-1]]
        s = s[:-1]
    try:
        value = int(s) * mult
    except ValueError:
        raise ConfigError(f"{name}: not a size: {text!r}") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}: must be positive, got {text!r}")
    return value


def _durability(name: str, text: str) -> Durability:
    """Parse 'fsync' or 'async' (any case)."""
    try:
        return Durability(text.strip().lower())
    except ValueError:
        allowed = " or ".join(repr(str(d)) for d in Durability)
        raise ConfigError(f"{name}: must be {allowed}, got {text!r}") from None


def _listen(name: str, text: str) -> str:
    """Check 'host:port' ('[::1]:port' for IPv6) with a port of 0-65535 (0: any
    free port). gRPC itself takes an out-of-range port as 'any'."""
    host, sep, port = text.strip().rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise ConfigError(f"{name}: must be host:port with a port of 0-65535, got {text!r}")
    return f"{host}:{int(port)}"


def _seconds(name: str, text: str) -> float:
    """Parse '10', '2.5' into a finite number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name}: not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}: must be zero or more seconds, got {text!r}")
    return value
