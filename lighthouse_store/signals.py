"""Operator signals: SIGHUP reloads, SIGUSR1 dumps every thread's stack.

SIGTERM and SIGINT drain and stop (``server.py``, ``supervisor.py``); the
two here leave the daemon serving.

SIGHUP
======

Reopens the log file (``--log-file``: after logrotate renamed it, the lines
go to a new file at the path) and reloads what can change without a
restart, after nginx's and PostgreSQL's reloads: the settings are resolved
again from the same sources (the flags given at start, the environment, the
config file as it is now) and :data:`RELOADABLE` ones take effect:
``log_level``, ``log_format`` and ``log_file``. Every other setting (the
address, the data dir, the map size, the limits, ...) is fixed for the
process's life: if one changed, a warning names it, and it takes effect at
the next restart. Each process logs one line saying what it now uses (at any
``--log-level``). The environment of a running process cannot change from
outside, so in practice a reload picks up what the config file says (a flag
or a variable still beats the file). A config file that no longer parses
leaves every setting as it was, with an error line; the log file is
reopened all the same.

A supervisor (``--workers`` > 1) reloads itself, then forwards SIGHUP to
every worker, which reloads from the same sources (its ``WorkerSpec`` holds
the supervisor's :class:`config.Source`); a worker started later gets the
reloaded settings. Only the supervisor warns about settings that need a
restart.

SIGUSR1
=======

Logs the stack of every Python thread, one line each (``stack``), then the
event loop's tasks grouped by where they wait (one line per distinct stack,
with ``tasks``, the count), on the ``lighthouse_store.stacks`` logger,
which logs at any ``--log-level``; the daemon keeps serving. A supervisor
forwards it to every worker and dumps its own. The handler is a Python
signal handler that starts a thread, not an event-loop callback, so a dump
comes even while a coroutine holds the loop; a process stuck inside a C
call answers once the call returns (``py-spy dump --pid`` sees it at once).
SIGQUIT keeps its default (quit with a core dump).

A process ignores both signals until its handlers are installed (just
before it serves), so an early one does not kill it as the default action
would.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

from lighthouse_store import config, logs
from lighthouse_store.config import Config, ConfigError

__all__ = [
    "RELOADABLE",
    "Reloader",
    "apply_logging",
    "dump_stacks",
    "ignore_until_installed",
    "install",
    "with_reloaded",
]

# What these log was asked for by the operator: shown at any --log-level.
log = logging.getLogger("lighthouse_store.signals")
log.setLevel(logging.INFO)
stacks_log = logging.getLogger("lighthouse_store.stacks")
stacks_log.setLevel(logging.INFO)

RELOADABLE = frozenset({"log_level", "log_format", "log_file"})
_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)

Forward = Callable[[signal.Signals], None]


def ignore_until_installed() -> None:
    """Ignore SIGHUP and SIGUSR1 (whose default is to end the process) until
    :func:`install`."""
    for sig in _SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def apply_logging(cfg: Config, fields: Mapping[str, object] | None = None) -> None:
    """Configure logging as ``cfg`` says; raises OSError (log file)."""
    logs.configure(
        cfg.log_level.value, format=cfg.log_format.value, file=cfg.log_file, fields=fields
    )


def _value(cfg: Config, path: tuple[str, ...]) -> object:
    value: object = cfg
    for name in path:
        value = getattr(value, name)
    return value


def with_reloaded(running: Config, new: Config) -> Config:
    """``running`` with the reloadable settings of ``new``."""
    return dataclasses.replace(running, **{name: getattr(new, name) for name in RELOADABLE})


class Reloader:
    """Resolves the settings again (``source``) and applies the reloadable ones.

    ``resolved``: the settings as resolved at start (before the process
    changed any, as the supervisor does ``listen`` and ``workers``);
    ``report``: warn about changed settings that need a restart."""

    def __init__(self, source: Callable[[], Config], resolved: Config, *, report: bool) -> None:
        self._source = source
        self._resolved = resolved
        self._report = report

    @property
    def current(self) -> Config:
        return self._resolved

    def reload(self) -> Config:
        """Reload; the settings now in force (as resolved)."""
        old = self._resolved
        try:
            new = self._source()
        except ConfigError as exc:
            self._reopen(old)
            log.error("SIGHUP: the configuration was not reloaded, the old one stays: %s", exc)
            return old
        try:
            apply_logging(new)
        except OSError as exc:
            log.error("SIGHUP: cannot open the log file %s (%s); logging as before",
                      new.log_file, exc.strerror or exc)  # fmt: skip
            new = dataclasses.replace(new, log_file=old.log_file)
            self._reopen(new)
        changed = [s.name for s in config.TABLE if _value(new, s.path) != _value(old, s.path)]
        restart = [name for name in changed if name not in RELOADABLE]
        self._resolved = with_reloaded(old, new)
        log.info("SIGHUP: log file reopened; log level %s, format %s, file %s",
                 new.log_level.value, new.log_format.value, new.log_file)  # fmt: skip
        if restart and self._report:
            log.warning("SIGHUP: %s changed and cannot be reloaded; a restart applies it",
                        ", ".join(restart))  # fmt: skip
        return self._resolved

    def _reopen(self, cfg: Config) -> None:
        try:
            apply_logging(cfg)
        except OSError as exc:
            log.error("SIGHUP: cannot reopen the log file %s (%s); logging as before",
                      cfg.log_file, exc.strerror or exc)  # fmt: skip


def install(
    loop: asyncio.AbstractEventLoop,
    reload: Callable[[], object],
    forward: Forward | None = None,
) -> None:
    """SIGHUP: ``reload()``, then ``forward(SIGHUP)``; SIGUSR1: ``forward(SIGUSR1)``
    and a stack dump. ``forward`` must be safe to call from a signal handler."""

    def on_hup() -> None:
        reload()
        if forward is not None:
            forward(signal.SIGHUP)

    def on_usr1(signum: int, frame: object) -> None:
        if forward is not None:
            forward(signal.SIGUSR1)
        threading.Thread(target=dump_stacks, args=(loop,), name="lh-stacks", daemon=True).start()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_usr1)


def dump_stacks(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Log every thread's stack but this one's, then ``loop``'s tasks by stack."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    frames = {ident: f for ident, f in sys._current_frames().items() if ident != me}
    stacks_log.info("SIGUSR1: dumping the stacks of %d threads", len(frames))
    for ident, frame in frames.items():
        name = names.get(ident, "?")
        stacks_log.info("stack of thread %s", name, extra={
            "thread_name": name, "thread_id": ident,
            "stack": "".join(traceback.format_stack(frame)),
        })  # fmt: skip
    if loop is not None:
        _dump_tasks(loop)


def _awaiting(coro: object) -> Iterator[tuple[FrameType, int]]:
    """The frames of ``coro`` and of what it awaits, outermost first (a
    task's own ``get_stack`` shows only its outermost coroutine)."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            return
        yield frame, frame.f_lineno
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    groups: collections.Counter[tuple[str, str]] = collections.Counter()
    try:
        tasks = asyncio.all_tasks(loop)  # the loop runs on: the set may change under us
    except RuntimeError:
        tasks = set()
    for task in tasks:
        try:
            coro = task.get_coro()
            stack = "".join(traceback.StackSummary.extract(_awaiting(coro)).format())
            groups[(getattr(coro, "__qualname__", type(coro).__name__), stack)] += 1
        except Exception:  # a task that ended meanwhile
            continue
    for (name, stack), count in groups.most_common():
        stacks_log.info("%d tasks waiting in %s", count, name,
                        extra={"tasks": count, "stack": stack})  # fmt: skip
