"""Stopping what a run started, each process by its PID, whatever fails on the way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (name, stop, fallback): what to run to stop it, and what to run if that fails
StopStep = tuple[str, Callable[[], object] | None, Callable[[], object] | None]


def stop_each(steps: list[StopStep], log: Callable[[str], None]) -> None:
    """Run each (name, stop, fallback) step; a failing stop is logged and its
    fallback run, and the steps after it still run."""
    for name, stop, fallback in steps:
        if stop is None:
            continue
        try:
            stop()
        except Exception as exc:  # keep stopping the others
            log(f"stopping the {name} failed: {exc!r}")
            if fallback is not None:
                fallback()


def daemon_step(name: str, daemon: Any) -> StopStep:
    """Stop a daemon (``DaemonProcess``) by SIGTERM; if that fails and it
    still runs, kill -9 it. Nothing to do for one never started."""
    if daemon is None or daemon.proc is None:
        return (name, None, None)
    return (name, daemon.stop, lambda: daemon.kill9() if daemon.running() else None)
