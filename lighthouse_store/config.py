"""Daemon configuration: every tunable, declared once, in the dataclasses below.

Each field of :class:`Config` (and of the groups nested in it, :class:`Limits`
and :class:`SubscriptionSettings`) is a setting declared with
``settings.setting(group, kind, default, help)``, or, for Limits, whose defaults
are shared with the client, with ``settings.declare`` where Config nests it;
``settings.py`` derives the
flag, the ``LIGHTHOUSE_*`` variable, the config-file key, the bounds check and
the README row from it. To add a setting, add a field here; then run
``scripts/generate_readme_settings.py`` (a test keeps the README's table in step).

Precedence, per setting: command-line flag > environment variable > config
file (``--config FILE`` or ``LIGHTHOUSE_CONFIG``: TOML with flat keys, the
setting names) > default. ``python -m lighthouse_store.config`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import cast

from lighthouse_proto.limits import Limits as Limits  # shared with the client
from lighthouse_store import settings
from lighthouse_store.settings import (
    GIB,
    KIB,
    MIB,
    TIB,
    Bool,
    Choice,
    ConfigError,
    Count,
    FileOrStream,
    FilePath,
    HostPort,
    HostPortOrOff,
    Milliseconds,
    OptionalFile,
    Ratio,
    Seconds,
    Size,
    declare,
    nested,
    setting,
)

__all__ = [
    "GIB",
    "KIB",
    "MIB",
    "TABLE",
    "TAIL_BYTES",
    "Config",
    "ConfigError",
    "DegradationSettings",
    "Durability",
    "Limits",
    "LogFormat",
    "LogLevel",
    "Source",
    "SubscriptionSettings",
    "Switch",
    "add_arguments",
    "from_args",
    "from_json",
    "markdown_table",
    "to_json",
]

# Default budget of the in-memory tail of recent records (tail.Tail):
# subscribers and reads near the head are served from it without LMDB.
TAIL_BYTES = 16 * MIB
# One page of a Read or a subscription must fit one gRPC message, whose limit
# is the largest append plus 4 MiB (server._server_options); a page runs past
# its byte budget by one record at most, and a record is no larger than an append.
_MAX_PAGE_BYTES = 2 * MIB
# The largest append or event a client can send or read back: the client
# library's channels carry messages of up to 64 MiB, and an event read back
# carries its metadata and the store's fields besides its data.
_MAX_MESSAGE_BYTES = 48 * MIB

CONFIG_FLAG = "--config"
CONFIG_ENV = "LIGHTHOUSE_CONFIG"

# Groups, in the order --help and the README show them.
SERVER = "Server"
STORAGE = "Storage"
WRITES = "Writes"
LIMITS = "Append limits"
READS = "Reads"
SUBSCRIPTIONS = "Subscriptions"
OPERATIONS = "Operations"
DEGRADATION = "Degradation"
SECURITY = "Security"


class Durability(StrEnum):
    FSYNC = "fsync"  # every acknowledged append is fsynced (LMDB sync commit)
    ASYNC = "async"  # commits are not fsynced; survives a process crash, not a power cut


class Switch(StrEnum):
    ON = "on"
    OFF = "off"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(StrEnum):
    JSON = "json"  # one JSON object per line (logs.py)
    TEXT = "text"  # one readable line per record, for a person at a terminal


@dataclass(frozen=True)
class SubscriptionSettings:
    """How subscription sessions read and talk (subscriptions.py)."""

    page_events: int = setting(
        SUBSCRIPTIONS, Count(1, 10_000), 500, "most events in one subscription message"
    )
    page_bytes: int = setting(
        SUBSCRIPTIONS, Size(KIB, _MAX_PAGE_BYTES), 512 * KIB,
        "a subscription message closes once it holds this many bytes of events",
    )  # fmt: skip
    inline_read_events: int = setting(
        SUBSCRIPTIONS, Count(0, 10_000), 64,
        "a session this close to the head reads on the event loop, saving a thread hop;"
        " `0`: always on a reader thread",
    )  # fmt: skip
    fell_behind_events: int = setting(
        SUBSCRIPTIONS, Count(1, 10_000_000), 10_000,
        "a live session this many events behind the head is sent `fell_behind` and"
        " catches up from storage",
    )  # fmt: skip
    default_heartbeat_ms: int = setting(
        SUBSCRIPTIONS, Milliseconds(100, 600_000), 5_000,
        "heartbeat after this much silence, for clients that ask for no interval",
    )  # fmt: skip
    default_checkpoint_interval: int = setting(
        SUBSCRIPTIONS, Count(1, 1_000_000), 1_000,
        "with a filter, a `checkpoint` after this many positions without a match,"
        " for clients that ask for no interval",
    )  # fmt: skip
    min_heartbeat_ms: int = setting(
        SUBSCRIPTIONS, Milliseconds(1, 600_000), 100,
        "shortest `heartbeat_interval_ms` a subscription may ask for (shorter is"
        " `INVALID_ARGUMENT`): each heartbeat costs the daemon a message",
    )  # fmt: skip
    min_checkpoint_interval: int = setting(
        SUBSCRIPTIONS, Count(1, 1_000_000), 100,
        "smallest `checkpoint_interval` a subscription may ask for (smaller is"
        " `INVALID_ARGUMENT`)",
    )  # fmt: skip
    max_scan: int = setting(
        SUBSCRIPTIONS, Count(1, 1_000_000), 8_000,
        "records a filtered session visits per read at most, so a reader thread"
        " is never held long",
    )  # fmt: skip


@dataclass(frozen=True)
class DegradationSettings:
    """The degradation controller's triggers (degradation.py, SPEC §4): each
    figure at or above its ``warn`` mark makes the level ``warning``, at or
    above its ``degraded`` mark ``degraded`` (read-only)."""

    window_seconds: float = setting(
        DEGRADATION, Seconds(1, 3600), 60.0,
        "the append p99 and the append error rate are over this sliding window",
    )  # fmt: skip
    p99_warn_ms: int = setting(
        DEGRADATION, Milliseconds(0, 3_600_000), 100, "append p99 of the warning level; `0`: none"
    )  # fmt: skip
    p99_degraded_ms: int = setting(
        DEGRADATION, Milliseconds(0, 3_600_000), 1_000,
        "append p99 of the degraded level; `0`: none",
    )  # fmt: skip
    error_warn_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.01,
        "share of appends failing for the server's sake (not bad input, not a refusal"
        " because degraded) that makes the level warning",
    )  # fmt: skip
    error_degraded_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.05, "share of failing appends of the degraded level"
    )  # fmt: skip
    used_warn_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.8,
        "share of the data volume (statvfs) or of the LMDB map used that makes the level"
        " warning",
    )  # fmt: skip
    used_degraded_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 1.0,
        "share of the data volume or map used that makes the level degraded; `1`: never"
        " (a full disk or map refuses appends with `STORAGE_FULL` by itself)",
    )  # fmt: skip
    memory_warn_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.9,
        "resident memory, as a share of `--memory-limit`, of the warning level",
    )  # fmt: skip
    memory_degraded_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.95,
        "resident memory, as a share of `--memory-limit`, of the degraded level",
    )  # fmt: skip
    clear_ratio: float = setting(
        DEGRADATION, Ratio(0.0, 1.0), 0.9,
        "hysteresis: a level is left only once every figure is below this share of its"
        " mark",
    )  # fmt: skip
    clear_seconds: float = setting(
        DEGRADATION, Seconds(0, 3600), 10.0,
        "hysteresis: ... and has stayed there this long",
    )  # fmt: skip


@dataclass(frozen=True)
class Config:
    listen: str = setting(
        SERVER, HostPort(), "127.0.0.1:50051",
        "`host:port` to serve gRPC on (`[::1]:port` for IPv6); port `0` picks a free"
        " one, which the ready line on stdout names",
    )  # fmt: skip
    log_level: LogLevel = setting(
        SERVER, Choice(LogLevel), LogLevel.INFO,
        "least severe level logged; SIGHUP reloads it",
    )  # fmt: skip
    log_format: LogFormat = setting(
        SERVER, Choice(LogFormat), LogFormat.JSON,
        "`json`: one JSON object per line (README, Logs); `text`: one readable line per"
        " record; SIGHUP reloads it",
    )  # fmt: skip
    log_file: str = setting(
        SERVER, FileOrStream("stderr"), "-",
        "file the logs are appended to; SIGHUP reopens it (after logrotate renames it)"
        " and reloads the setting",
    )  # fmt: skip
    workers: int = setting(
        SERVER, Count(0, 1024), 0,
        "processes serving gRPC on the one `--listen` port, under a supervisor that"
        " restarts any that dies; `0`: one per usable CPU (the CPU affinity mask and the"
        " cgroup CPU quota, at least 1); `1`: a single process, no supervisor",
    )  # fmt: skip
    shutdown_grace_seconds: float = setting(
        SERVER, Seconds(0, 3600), 10.0,
        "on SIGTERM or SIGINT, how long in-flight unary calls get to finish once the"
        " writer is quiet (or 2 s have passed); streams (Read, Subscribe) end within 1 s",
    )  # fmt: skip
    data_dir: Path = setting(
        STORAGE, FilePath(), Path("data"),
        "data directory (LMDB files in `lmdb/`, the single-daemon `LOCK`), relative to"
        " the working directory",
    )  # fmt: skip
    durability: Durability = setting(
        STORAGE, Choice(Durability), Durability.FSYNC,
        "`fsync`: an append is acknowledged after its commit is fsynced. `async`: no"
        " fsync (survives a process crash, not a power cut); `GetInfo` reports it and"
        " the daemon logs a warning at start",
    )  # fmt: skip
    map_size: int = setting(
        STORAGE, Size(MIB, 16 * TIB), 64 * GIB,
        "LMDB map size at start (address space only; the file grows with the data, plus"
        " `--preallocate`); the map grows online from there up to `--max-map-size`",
    )  # fmt: skip
    max_map_size: int = setting(
        STORAGE, Size(0, 16 * TIB), 0,
        "the most the LMDB map grows to, online (README, Disk and map pressure); `0`:"
        " what the disk holds (the data volume's size)",
    )  # fmt: skip
    disk_block_ratio: float = setting(
        STORAGE, Ratio(0.5, 1.0), 0.95,
        "appends are refused (`RESOURCE_EXHAUSTED`, `STORAGE_FULL`, recoverable) once the"
        " data volume or the LMDB map is this much used",
    )  # fmt: skip
    disk_resume_ratio: float = setting(
        STORAGE, Ratio(0.5, 1.0), 0.90,
        "refused appends are taken again, by themselves, once the volume and the map are"
        " below this (a value above `--disk-block-ratio` counts as that)",
    )  # fmt: skip
    preallocate: int = setting(
        STORAGE, Size(0, 16 * GIB), 64 * MIB,
        "space kept zero-filled in `data.mdb` past what the store uses, so commits"
        " overwrite allocated blocks instead of growing the file (faster commits and"
        " fsyncs; `lighthouse_store/prealloc.py`); `0` turns it off",
    )  # fmt: skip
    tail_bytes: int = setting(
        STORAGE, Size(0, 16 * GIB), TAIL_BYTES,
        "memory kept for the newest records: live subscribers and reads near the head"
        " take them from here instead of LMDB; it counts the records' bytes (Python"
        " adds its per-record overhead); `0` turns it off",
    )  # fmt: skip
    scrub_records_per_second: int = setting(
        STORAGE, Count(0, 1_000_000), 1_000,
        "records the background scrub re-reads and checks per second at most, only while"
        " no write commits, from the oldest on and round again; a finding makes the store"
        " read-only (README, Integrity); `0` turns it off",
    )  # fmt: skip
    # Group commit: appends queued beyond max_queue, or beyond max_queued_bytes
    # of events, fail at once with RESOURCE_EXHAUSTED; one transaction takes at
    # most max_batch_appends appends or max_batch_bytes bytes (writer.py).
    max_queue: int = setting(
        WRITES, Count(1, 1_000_000), 10_000,
        "appends waiting for the writer before new ones get `RESOURCE_EXHAUSTED`",
    )  # fmt: skip
    max_queued_bytes: int = setting(
        WRITES, Size(KIB, 64 * GIB), 256 * MIB,
        "bytes of events waiting for the writer before new appends get"
        " `RESOURCE_EXHAUSTED`; at least `--max-append-bytes`, so that any valid append"
        " fits. A waiting append holds about twice its events' bytes in memory",
    )  # fmt: skip
    max_batch_appends: int = setting(
        WRITES, Count(1, 100_000), 1_000,
        "most appends grouped into one transaction and one fsync; `1` turns group"
        " commit off (for comparisons)",
    )  # fmt: skip
    max_batch_bytes: int = setting(
        WRITES, Size(KIB, GIB), 64 * MIB,
        "a group closes once it holds this many bytes of events",
    )  # fmt: skip
    limits: Limits = nested(
        Limits,
        max_event_data_bytes=declare(
            LIMITS, Size(1, _MAX_MESSAGE_BYTES), "largest `data` of one event"
        ),
        max_events_per_append=declare(LIMITS, Count(1, 100_000), "events in one append"),
        max_append_bytes=declare(
            LIMITS, Size(KIB, _MAX_MESSAGE_BYTES), "encoded events in one append"
        ),
        max_metadata_entries=declare(LIMITS, Count(1, 10_000), "metadata entries per event"),
        max_metadata_bytes=declare(LIMITS, Size(1, MIB), "metadata keys + values per event"),
    )
    page_events: int = setting(READS, Count(1, 10_000), 1_000, "most events in one `Read` response")
    page_bytes: int = setting(
        READS, Size(KIB, _MAX_PAGE_BYTES), 1 * MIB,
        "a `Read` response closes once it holds this many bytes of events",
    )  # fmt: skip
    reader_threads: int = setting(
        READS, Count(1, 64), 4, "threads reading LMDB for reads and subscriptions"
    )
    ack_delay_ms: int = setting(
        SUBSCRIPTIONS, Milliseconds(0, 10_000), 50,
        "a consumer's ack rides along with the next append's commit, or is committed"
        " on its own this long after, so acks never cost an fsync each",
    )  # fmt: skip
    subscriptions: SubscriptionSettings = nested(SubscriptionSettings, prefix="subscribe_")
    max_streams: int = setting(
        SECURITY, Count(1, 1_000_000), 4_096,
        "streaming calls in flight in each process; more: `RESOURCE_EXHAUSTED`",
    )  # fmt: skip
    max_streams_per_client: int = setting(
        SECURITY, Count(1, 1_000_000), 1_024,
        "streaming calls in flight per principal (per client host when anonymous), in"
        " each process; more: `RESOURCE_EXHAUSTED`",
    )  # fmt: skip
    max_streams_per_connection: int = setting(
        SECURITY, Count(1, 1_000_000), 1_000,
        "HTTP/2 streams one connection may have open (MAX_CONCURRENT_STREAMS); more wait",
    )  # fmt: skip
    rate_requests: int = setting(
        SECURITY, Count(0, 100_000_000), 10_000,
        "calls per second each principal (each client host when anonymous) may make, per"
        " serving process; more: `RATE_LIMITED`; `0`: no limit",
    )  # fmt: skip
    rate_events: int = setting(
        SECURITY, Count(0, 100_000_000), 200_000,
        "events per second each principal may append, per serving process; `0`: no limit",
    )  # fmt: skip
    rate_bytes: int = setting(
        SECURITY, Size(0, 64 * GIB), 256 * MIB,
        "bytes of events per second each principal may append, per serving process;"
        " `0`: no limit",
    )  # fmt: skip
    rate_new_streams: int = setting(
        SECURITY, Count(0, 100_000_000), 1_000,
        "streams per second each principal may create, per serving process (charged once"
        " the append has committed: the next call waits); `0`: no limit",
    )  # fmt: skip
    tls_cert: str = setting(
        SECURITY, OptionalFile(), "",
        "PEM certificate chain the gRPC port presents (with `--tls-key`): TLS; SIGHUP"
        " reads the files again, for new connections",
    )  # fmt: skip
    tls_key: str = setting(SECURITY, OptionalFile(), "", "PEM private key of `--tls-cert`")
    tls_client_ca: str = setting(
        SECURITY, OptionalFile(), "",
        "PEM CA certificates: clients must present a certificate they signed (mTLS); its"
        " CN can name a principal of `--tokens-file`",
    )  # fmt: skip
    tokens_file: str = setting(
        SECURITY, OptionalFile(), "",
        "TOML file of principals (token hashes, certificate CNs) and their roles per"
        " stream prefix; every call must then authenticate (README, Security); SIGHUP"
        " reloads it",
    )  # fmt: skip
    insecure: bool = setting(
        SECURITY, Bool(), False,
        "allow serving on an address other than loopback without TLS and tokens",
    )  # fmt: skip
    http_listen: str = setting(
        OPERATIONS, HostPortOrOff(), "127.0.0.1:9464",
        "`host:port` of the HTTP operations endpoint: `/metrics` (Prometheus),"
        " `/health`, `/health/detailed`, `/health/{component}`; port `0` picks a free one,"
        " which the ready line names (`http`); `off`: no endpoint",
    )  # fmt: skip
    metrics: Switch = setting(
        OPERATIONS, Choice(Switch), Switch.ON,
        "`off`: no per-call, per-commit or per-delivery instruments (for comparing their"
        " cost); `/metrics` keeps the storage, process and health figures",
    )  # fmt: skip
    memory_limit: int = setting(
        DEGRADATION, Size(0, 16 * TIB), 0,
        "memory each serving process may use (resident): the memory triggers are shares of"
        " it; `0`: the cgroup's memory limit when there is one, else no memory trigger",
    )  # fmt: skip
    degradation: DegradationSettings = nested(DegradationSettings, prefix="degrade_")
    writer_stall_seconds: float = setting(
        OPERATIONS, Seconds(0.5, 3600.0), 5.0,
        "the writer check of `/health` fails (503, gRPC health `NOT_SERVING`) once appends"
        " have waited this long with no commit finishing",
    )  # fmt: skip


TABLE = settings.table(Config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        CONFIG_FLAG,
        metavar="FILE",
        default=None,
        help=f"TOML file of settings (keys: the flag names with _); flags and"
        f" variables override it [{CONFIG_ENV}]",
    )
    settings.add_arguments(parser, TABLE)


@dataclass(frozen=True)
class Source:
    """Where a Config comes from: the flags given and the file ``--config``
    names. The environment and the file are read at each :meth:`resolve`, so
    a reload (SIGHUP, ``signals.py``) sees the file as it is then; a worker
    process gets its supervisor's Source (``worker.py``) to reload alike."""

    flags: dict[str, object] = field(default_factory=dict)  # setting name -> flag value given
    config_file: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Source:
        given = {s.name: v for s in TABLE if (v := getattr(args, s.name, None)) is not None}
        return cls(given, getattr(args, "config", None))

    def resolve(self, environ: Mapping[str, str] | None = None) -> Config:
        """A Config from the flags, the environment, the config file, the defaults."""
        env = os.environ if environ is None else environ
        file_name, file_values = _config_file(self.config_file, env)
        resolved = settings.resolve(
            Config,
            TABLE,
            flags=self.flags,
            environ=env,
            file_values=file_values,
            file_name=file_name,
        )
        cfg, where = resolved.value, resolved.where
        # An append bigger than the queue's byte bound could never be queued, and
        # its caller would retry a RESOURCE_EXHAUSTED forever.
        if cfg.max_queued_bytes < cfg.limits.max_append_bytes:
            raise ConfigError(
                f"{where['max_queued_bytes']} ({cfg.max_queued_bytes}) must be at least"
                f" {where['max_append_bytes']} ({cfg.limits.max_append_bytes})"
            )
        return cfg


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """A Config from parsed flags, the environment, the config file, the defaults."""
    return Source.from_args(args).resolve(environ)


def _config_file(flag: str | None, environ: Mapping[str, str]) -> tuple[str, dict[str, object]]:
    path, where = (flag, CONFIG_FLAG) if flag is not None else (environ.get(CONFIG_ENV), CONFIG_ENV)
    if path is None:
        return "", {}
    if not path.strip():
        raise ConfigError(f"{where}: must name a file, got {path!r}")
    return path, settings.read_file(path, TABLE)


def to_json(cfg: Config) -> dict[str, object]:
    """A resolved Config as JSON values by setting name (enums and paths as
    strings), for a worker process (``worker.py``): it gets the supervisor's
    Config as resolved, never the user's flags, variables and file again."""
    out: dict[str, object] = {}
    for s in TABLE:
        value: object = cfg
        for name in s.path:
            value = getattr(value, name)
        out[s.name] = str(value) if isinstance(value, Path | StrEnum) else value
    return out


def from_json(values: Mapping[str, object]) -> Config:
    """The Config that :func:`to_json` gave; each value takes its default's type."""
    built: dict[tuple[str, ...], object] = {}
    for s in TABLE:
        if s.name in values:
            of_type = cast(Callable[[object], object], type(s.default))
            built[s.path] = of_type(values[s.name])
    return settings.build(Config, built)


def markdown_table() -> str:
    """The README's settings table."""
    return settings.markdown_table(TABLE)


if __name__ == "__main__":
    sys.stdout.write(markdown_table())
