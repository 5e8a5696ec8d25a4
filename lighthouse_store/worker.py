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
``ops.py``), which its gRPC health then says, and the degradation level
(``{"event": "level", "level", "trigger", "position"}``), which its store's
write gate then holds (``degradation.py``). The other way go the admin calls
it is asked (``{"event": "admin", "id", "op", "level", "reason"}``, answered
by ``{"event": "admin-reply", "id", "status"}`` or ``"error"``: the
supervisor's controller decides) and the corruption it finds
(``{"event": "corruption", "what", "position", "message"}``). Its metrics go to the
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

__all__ = ["EXIT_ORPHANED", "ControlChannel", "WorkerSpec", "die_with_parent", "main"]

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

    from lighthouse_store import config, corruption, signals
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
    channel = ControlChannel(control)
    ops = WorkerOps(cfg, channel)
    corruption.add_hook(channel.corruption_found)
    threading.Thread(
        target=channel.follow, args=(ops.verdict, ops.level), name="lh-control", daemon=True
    ).start()

    def ready(address: str) -> None:
        channel.send({"event": "ready", "address": address, "pid": os.getpid(),
                      "worker": spec.index})  # fmt: skip

    async def serve() -> None:
        store = open_store(cfg, shared=True, preallocate=False, gate=ops.gate)
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


class ControlChannel:
    """The worker's end of the control socket: what it says, what it hears."""

    ADMIN_TIMEOUT_S = 60.0

    def __init__(self, control: socket.socket) -> None:
        self._control = control
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._control.sendall(json.dumps(message).encode() + b"\n")

    def follow(
        self,
        verdict: Callable[[bool], None],
        level: Callable[[str, str, int | None], None],
    ) -> None:
        """Read the supervisor's messages until it closes the socket."""
        with self._control.makefile("rb") as lines:
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(message, dict):
                    continue
                event = message.get("event")
                if event == "health":
                    verdict(bool(message.get("serving")))
                elif event == "level":
                    level(str(message["level"]), str(message["trigger"]), message.get("position"))
                elif event == "admin-reply":
                    waiting = self._waiting.pop(int(message["id"]), None)
                    if waiting is not None:
                        waiting[1].append(message)
                        waiting[0].set()

    def corruption_found(self, finding: Any) -> None:
        """A ``corruption.add_hook`` hook: the supervisor's controller decides."""
        self.send({"event": "corruption", "what": finding.what, "position": finding.position,
                   "message": finding.message})  # fmt: skip

    def _ask(self, op: str, **fields: str) -> dict[str, Any]:
        from lighthouse_store.errors import StorageFailure  # the slow imports are loaded by now

        done: threading.Event = threading.Event()
        answer: list[dict[str, Any]] = []
        with self._lock:
            self._next += 1
            ident = self._next
            self._waiting[ident] = (done, answer)
        self.send({"event": "admin", "id": ident, "op": op, **fields})
        if not done.wait(self.ADMIN_TIMEOUT_S):
            self._waiting.pop(ident, None)
            raise StorageFailure("the supervisor did not answer the admin call in time")
        reply = answer[0]
        if "status" not in reply:
            raise StorageFailure(f"the admin call failed: {reply.get('error', 'unknown error')}")
        status: dict[str, Any] = reply["status"]
        return status

    def degrade(self, level: str, reason: str) -> dict[str, Any]:
        return self._ask("degrade", level=level, reason=reason)

    def recover(self, reason: str) -> dict[str, Any]:
        return self._ask("recover", reason=reason)

    def status(self) -> dict[str, Any]:
        return self._ask("status")


if __name__ == "__main__":
    raise SystemExit(main())
