"""A worker process: ``python -m lighthouse_store.worker`` (started by the supervisor only).

The supervisor (``supervisor.py``) starts each worker as a fresh interpreter
(never ``fork``: gRPC and LMDB do not survive one) with one end of a Unix
socket pair as ``--control-fd``, and writes the :class:`WorkerSpec` to it as
one JSON line: the worker's index, the Config as the supervisor resolved it
(the port already chosen), the name space of the wake-up sockets, and where
that Config came from (``config.Source``), to reload from on SIGHUP. The
worker opens the store (shared, without a preallocator: the supervisor runs
that), serves gRPC on the shared port, and answers with one JSON line once
it serves: ``{"event": "ready", "address": ..., "pid": ..., "worker": i}``.
It keeps the socket open while it lives, and reads from it what the
supervisor's health verdict is (``{"event": "health", "serving": bool}``,
``ops.py``), which its gRPC health then says. Its metrics go to the
supervisor through prometheus-client's multiprocess files, in the directory
its environment names (``PROMETHEUS_MULTIPROC_DIR``, ``metrics.py``).

It dies with the supervisor: the first thing it does, before the slow
imports, is ask the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), then check that its parent is still the supervisor
that started it (had that one died in between, the signal would never
come). So a ``kill -9`` of the supervisor leaves no worker holding the port
or the store. A worker never takes the data-dir lock (its parent holds it)
and inherits no descriptor but the control socket (``close_fds``), so the
lock goes the moment the supervisor dies.

Exit status: 0 after a drain, 1 a store it cannot open, 2 a port it cannot bind,
4 a damaged store (``integrity.py``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["EXIT_ORPHANED", "WorkerSpec", "die_with_parent", "main"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_ORPHANED = 70  # the supervisor died before this worker could arrange to die with it
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 4


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells a worker, as one JSON line on the control socket."""

    index: int
    workers: int
    namespace: str  # of the wake-up sockets (wakeups.py)
    config: dict[str, Any]  # config.to_json of the supervisor's Config
    source: dict[str, Any]  # the supervisor's config.Source, to reload from on SIGHUP

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> WorkerSpec:
        return cls(**json.loads(line))


def die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies; exit now if it already has (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent:
        os._exit(EXIT_ORPHANED)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "--control-fd" or args[2] != "--supervisor-pid":
        print("lighthouse_store.worker is started by `lighthouse-store serve`", file=sys.stderr)
        return EXIT_USAGE
    die_with_parent(int(args[3]))
    # Until the server installs its handlers (signals.py): the default would end the worker.
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    control = socket.socket(fileno=int(args[1]))
    with control.makefile("rb") as lines:
        line = lines.readline()
    if not line:  # the supervisor went away before it said what to do
        return EXIT_ORPHANED
    return _run(WorkerSpec.decode(line), control)


def _run(spec: WorkerSpec, control: socket.socket) -> int:
    # The slow imports (gRPC, LMDB, protobuf) only once this worker dies with
    # its supervisor (main).
    import asyncio

    from lighthouse_store import config, signals
    from lighthouse_store.errors import StoreDamaged, StoreError
    from lighthouse_store.ops import WorkerOps
    from lighthouse_store.server import BindError, WorkerRole, open_store, run
    from lighthouse_store.wakeups import Wakeups

    cfg = config.from_json(spec.config)
    try:
        signals.apply_logging(cfg, {"worker": spec.index})
    except OSError as exc:
        print(f"lighthouse-store: worker {spec.index}: cannot open the log file {cfg.log_file}:"
              f" {exc.strerror or exc}", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    # Only the supervisor warns about settings that need a restart.
    reloader = signals.Reloader(config.Source(**spec.source).resolve, cfg, report=False)
    ops = WorkerOps(cfg)
    threading.Thread(
        target=_follow_control, args=(control, ops.verdict), name="lh-control", daemon=True
    ).start()

    def ready(address: str) -> None:
        message = {"event": "ready", "address": address, "pid": os.getpid(), "worker": spec.index}
        control.sendall(json.dumps(message).encode() + b"\n")

    async def serve() -> None:
        store = open_store(cfg, shared=True, preallocate=False)
        try:
            wakeups = Wakeups(spec.namespace, spec.index, spec.workers)
            role = WorkerRole(spec.index, wakeups)
            await run(cfg, store, ready=ready, reloader=reloader, ops=ops, worker=role)
        finally:
            store.close()

    try:
        asyncio.run(serve())
    except BindError as exc:
        print(f"lighthouse-store: worker {spec.index}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreDamaged as exc:
        print(f"lighthouse-store: worker {spec.index}: the store is damaged: {exc.message}",
              file=sys.stderr)  # fmt: skip
        return EXIT_DAMAGED
    except StoreError as exc:
        print(f"lighthouse-store: worker {spec.index}: cannot open the store: {exc.message}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    except OSError as exc:
        print(f"lighthouse-store: worker {spec.index}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _follow_control(control: socket.socket, verdict: Callable[[bool], None]) -> None:
    """Read the supervisor's messages until it closes the socket: each
    ``{"event": "health", "serving": bool}`` sets this worker's gRPC health."""
    with control.makefile("rb") as lines:
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("event") == "health":
                verdict(bool(message.get("serving")))


if __name__ == "__main__":
    raise SystemExit(main())
