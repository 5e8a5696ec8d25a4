"""The supervisor: what ``lighthouse-store serve`` runs with ``--workers`` N > 1.

Processes
=========

One supervisor, the process the user started, and N worker processes, its
children. ``--workers 1`` runs none of this: the daemon is one process
(``server.serve``), as it always was.

Who owns what
=============

- The supervisor owns the data-dir lock (``lock.py``) for its whole life;
  the start-up checks (it opens the LMDB environment before any worker
  starts: ``integrity.py``'s checks of the files, the store id and the
  newest records, the format version, stale reader slots), so a bad store
  fails fast with the single process's exit codes and messages; the
  background scrub (``scrub.py``); the preallocator (``prealloc.py``, holding LMDB's own write
  lock, so no worker commits while it writes); the listen port
  (``ports.py``: bound but never listening, so that port 0 is resolved once
  and the port stays taken while workers restart); signals; restarts;
  LMDB's reader check after a worker dies; and the HTTP operations endpoint
  (``ops.py``): ``/metrics`` aggregates the workers' metrics, which they
  write to prometheus-client's multiprocess files in a private directory
  this process makes (and removes), and ``/health`` judges each live
  worker's figures; the verdict goes to every worker over its control
  socket, and its gRPC health says it. It never serves gRPC and never
  commits.
- Each worker owns a gRPC server bound to the shared port with
  ``SO_REUSEPORT``, its own ``LmdbEventStore`` on the shared environment,
  its own group-commit writer, reader threads and subscription hub, and a
  wake-up socket (``wakeups.py``). It holds no lock of the data dir.
- Shared: the LMDB environment, whose write lock orders every worker's
  write transactions (each check runs inside the transaction,
  ``lmdb_store.py``), and the port.

The path of a request
=====================

The kernel gives each new TCP connection to one worker's listening socket
(a hash of the connection's addresses and ports); every call on that
connection goes to that worker. An append is validated and queued there,
committed by that worker's writer under LMDB's write lock (grouped with
that worker's other appends), and answered from there. Right after the
commit the writer sends every other worker a datagram, and each wakes its
subscriptions, which read the new events from LMDB (``wakeups.py``). Reads,
GetEvent and subscriptions read LMDB in the worker that has the connection.
GetInfo reads the head from storage; its subscriber count is the answering
worker's own.

Start-up
========

Lock the data dir (exit 3 if another daemon has it); open the store (exit
4 if it is damaged, 1 if it cannot be opened otherwise) and start the
preallocator and the scrub; reserve the port (exit 2); start every
worker as a fresh interpreter (``python -m lighthouse_store.worker``, never
``fork``: gRPC and LMDB do not survive one), from the main thread (the
kernel's parent-death signal follows the thread that started a child), and
send it its spec over a socket pair (``worker.py``: the Config as resolved
here, the port chosen); wait until each says it serves. A worker that
exits first fails the start: the others are stopped, and the supervisor
exits with that worker's status (2: the port, 1 or 4: the store). Then the ready
line on stdout: ``{"event": "ready", "address": ..., "pid": <supervisor>,
"workers": N}``.

Shutdown
========

SIGTERM or SIGINT: no more restarts; every worker gets SIGTERM and drains as
a single process does (``server.py``: health NOT_SERVING, subscriptions
end, late appends refused with UNAVAILABLE, the writer commits what is
queued). The supervisor waits for each up to ``shutdown_grace_seconds`` +
``DRAIN_MARGIN_S``, SIGKILLs any still running (logged; the exit status is
then 1), runs the reader check, stops the preallocator, lets go of the port
and the lock, and exits 0.

SIGHUP and SIGUSR1: the supervisor reloads its settings (or dumps its
stacks) and forwards the signal to every worker, which does the same; see
``signals.py``. Nothing drains; every worker keeps serving.

Worker death
============

A worker that exits unasked is logged (an error naming its index, pid and
exit status or signal), LMDB's reader check frees the reader slots of dead
processes (a killed worker's would otherwise stay taken, and an open one
would pin old pages), and a new worker takes its index after a back-off:
``RESTART_DELAY_S``, doubled for each exit in a row that came less than
``HEALTHY_AFTER_S`` after its start, at most ``MAX_RESTART_DELAY_S``. Its
clients see UNAVAILABLE and reconnect; the kernel gives new connections to
the workers that listen. A worker killed in the middle of a commit held
LMDB's write lock, a robust mutex that the next writer recovers; that
transaction never happened and was never acknowledged.

If the supervisor itself is killed (``kill -9``), the kernel kills every
worker (``PR_SET_PDEATHSIG``, ``worker.py``) and drops the lock, so a
restart finds neither a stray worker on the port nor the data dir locked;
its start-up reader check frees the dead workers' slots.

Degradation
===========

The degradation controller (``degradation.py``) runs here, in
``SupervisorOps``: one decides for every worker. It reads the workers'
Append figures from the multiprocess files, and hears of corruption from
the scrub (in this process) and from the workers (a ``corruption`` line on
the control socket, which also carries the admin calls a worker was asked:
``admin`` lines, answered with ``admin-reply``, ``worker.py``). A change of
level is committed here, through ``LmdbEventStore.commit`` on the shared
environment (this process already holds it for the start-up checks, the
preallocator and the scrub; no other thread of this process commits), so
it takes LMDB's write lock ahead of every worker's next group; then the
workers' subscriptions are woken (``wakeups.py``, this process as one more
peer, index N) and every worker is sent the level (a ``level`` line) on the
control socket, which sets its store's gate: within a second, usually a
millisecond. A worker that starts is told the level before it is counted
as serving. A message on a socket rather than a shared memory page: a
worker reads the level once per append as an attribute either way, and the
socket already carries the health verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lighthouse_store
from lighthouse_store import __version__, config, scrub, signals
from lighthouse_store.config import Config, Durability, Source
from lighthouse_store.corruption import Finding
from lighthouse_store.degradation import recorded, system_event
from lighthouse_store.lmdb_store import LmdbEventStore
from lighthouse_store.lock import DataDirLock
from lighthouse_store.ops import SupervisorOps
from lighthouse_store.ports import PortReservation
from lighthouse_store.scrub import Scrubber
from lighthouse_store.server import open_store
from lighthouse_store.wakeups import Wakeups
from lighthouse_store.worker import WorkerSpec

__all__ = ["WorkerStartError", "supervise"]

log = logging.getLogger("lighthouse_store.supervisor")

READY_TIMEOUT_S = 60.0  # a worker that does not serve by then is killed
RESTART_DELAY_S = 0.1
MAX_RESTART_DELAY_S = 10.0
HEALTHY_AFTER_S = 30.0  # an exit later than this after the start resets the back-off
# A worker's drain takes up to 2 s for the writer to go quiet (server._drain)
# plus the grace; past that and this margin, it is killed.
DRAIN_MARGIN_S = 5.0


class WorkerStartError(RuntimeError):
    """A worker exited before it served; ``code`` is its exit status."""

    def __init__(self, index: int, code: int) -> None:
        super().__init__(f"worker {index} exited with status {code} before it served")
        self.code = code


@dataclass
class _Slot:
    """One worker index, and the process that has it now."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    control: asyncio.StreamWriter | None = None
    started: float = 0.0
    quick_exits: int = 0  # exits in a row, each less than HEALTHY_AFTER_S after its start
    serving: bool = False  # it said it serves, and has not exited since
    listener: asyncio.Task[None] | None = None  # reads what it says on the control socket

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


async def supervise(cfg: Config, workers: int, reloader: signals.Reloader, source: Source) -> int:
    """Run the supervisor until SIGTERM/SIGINT; the exit status. Raises
    DataDirLocked, BindError, StoreError, OSError and WorkerStartError.
    ``reloader``: SIGHUP's; ``source``: where the workers reload from."""
    lock = DataDirLock(cfg.data_dir).acquire()
    try:
        store = open_store(cfg, shared=True)  # the start-up checks; the preallocator
        scrubber = Scrubber(store, cfg.scrub_records_per_second, scrub.told).start()
        try:
            reservation = PortReservation(cfg.listen)
            try:
                supervisor = Supervisor(cfg, workers, store, reservation.address)
                return await supervisor.run(reloader, source)
            finally:
                reservation.close()
        finally:
            scrubber.close()
            store.reader_check()
            store.close()
    finally:
        lock.release()


class Supervisor:
    def __init__(self, cfg: Config, workers: int, store: LmdbEventStore, address: str) -> None:
        self._config = dataclasses.replace(cfg, listen=address, workers=workers)
        self._store = store
        self._namespace = f"lighthouse-store/{os.getpid()}/{secrets.token_hex(4)}"
        self._slots = [_Slot(i) for i in range(workers)]
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source = Source()
        self._tasks: set[asyncio.Task[None]] = set()
        # To wake the workers' subscriptions after a level event: one more peer.
        self._wakeups = Wakeups(self._namespace, workers, workers)
        try:
            # The HTTP endpoint, bound here (BindError) before any worker starts.
            self._ops = SupervisorOps(
                self._config, store, self._serving, self._tell_workers, self._tell_level
            )
        except BaseException:
            self._wakeups.close()
            raise

    async def run(self, reloader: signals.Reloader, source: Source) -> int:
        try:
            return await self._run(reloader, source)
        finally:
            self._ops.close()
            self._wakeups.close()

    async def _run(self, reloader: signals.Reloader, source: Source) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self._source = source

        def reload() -> None:
            # A worker started from now on gets the reloaded settings.
            self._config = signals.with_reloaded(self._config, reloader.reload())

        signals.install(loop, reload, self._forward)
        self._ops.start(self._record)
        cfg = self._config
        log.info(
            "starting %d workers on %s (data dir %s, durability %s, version %s)",
            len(self._slots),
            cfg.listen,
            cfg.data_dir,
            cfg.durability.value,
            __version__,
        )
        if cfg.durability is not Durability.FSYNC:
            log.warning(
                "durability %s: acknowledged appends are not fsynced, so a power cut "
                "can lose the newest of them (GetInfo reports the mode)",
                cfg.durability.value,
            )
        watchers: list[asyncio.Task[None]] = []
        try:
            if not await self._start_all():
                return 0 if await self._shut_down() else 1
            self._ops.serving()
            ready: dict[str, object] = {
                "event": "ready", "address": cfg.listen, "pid": os.getpid(),
                "workers": len(self._slots),
            }  # fmt: skip
            if self._ops.endpoint.address is not None:
                ready["http"] = self._ops.endpoint.address
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            watchers = [loop.create_task(self._watch(slot)) for slot in self._slots]
            await self._stop.wait()
            log.info("shutting down: draining %d workers", len(self._slots))
            self._ops.stopping()
            clean = await self._shut_down()
            await asyncio.wait(watchers, timeout=DRAIN_MARGIN_S)
            return 0 if clean else 1
        finally:
            for task in watchers:
                task.cancel()
            for slot in self._slots:
                await self._kill(slot)

    async def _start_all(self) -> bool:
        """Start every worker; False if asked to stop first. Raises WorkerStartError."""
        loop = asyncio.get_running_loop()
        starting = asyncio.gather(*(self._start(slot) for slot in self._slots))
        stop = loop.create_task(self._stop.wait())
        await asyncio.wait((starting, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return False
        for slot, code in zip(self._slots, starting.result(), strict=True):
            if code is not None:
                await self._shut_down()
                raise WorkerStartError(slot.index, code)
        return True

    async def _start(self, slot: _Slot) -> int | None:
        """Start the worker of ``slot`` and wait until it serves: None, or
        the status it exited with first."""
        ours, theirs = socket.socketpair()
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                *_worker_command(theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stdout is the supervisor's ready line
                pass_fds=(theirs.fileno(),),
                env=_worker_environment(self._ops.worker_environment()),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.started = asyncio.get_running_loop().time()
        if self._stop.is_set():  # a shutdown began while this one was starting
            slot.proc.send_signal(signal.SIGTERM)
        reader, slot.control = await asyncio.open_unix_connection(sock=ours)
        spec = WorkerSpec(
            slot.index,
            len(self._slots),
            self._namespace,
            config.to_json(self._config),
            dataclasses.asdict(self._source),
        )
        slot.control.write(spec.encode())
        slot.serving = False
        line = b""
        try:
            line = await asyncio.wait_for(self._until_ready(slot, reader), READY_TIMEOUT_S)
        except TimeoutError:
            log.error("worker %d (pid %d) did not serve within %.0f s; killing it",
                      slot.index, slot.proc.pid, READY_TIMEOUT_S)  # fmt: skip
        if not _says_ready(line):  # it exited (its status says why), or it is stuck
            if slot.alive():
                slot.proc.kill()
            code = await slot.proc.wait()
            self._ops.worker_exited(slot.proc.pid)
            return code
        log.info("worker %d (pid %d) serving", slot.index, slot.proc.pid)
        self._send_level(*self._ops.level(), slot)
        slot.serving = True
        self._send_verdict(self._ops.verdict(), slot)
        slot.listener = asyncio.get_running_loop().create_task(self._listen(slot, reader))
        return None

    def _serving(self) -> list[tuple[int, int]]:
        """(index, pid) of each worker that serves now (any thread: the health monitor's)."""
        return [
            (slot.index, slot.proc.pid)
            for slot in self._slots
            if slot.serving and slot.proc is not None and slot.proc.returncode is None
        ]

    def _tell_workers(self, serving: bool) -> None:
        """Pass the health verdict to every serving worker (from any thread)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: no worker left to tell
            self._loop.call_soon_threadsafe(self._send_verdict, serving, None)

    def _send_verdict(self, serving: bool, only: _Slot | None) -> None:
        line = json.dumps({"event": "health", "serving": serving}).encode() + b"\n"
        for slot in self._slots if only is None else [only]:
            if slot.serving and slot.control is not None:
                slot.control.write(line)

    def _record(self, event_type: str, data: dict[str, object]) -> None:
        """The controller's ``record`` (its thread): one ``$system`` event,
        committed and flushed here, then the workers' subscriptions woken."""
        recorded(self._store.commit([system_event(event_type, data)])[0])
        self._wakeups.announce()

    def _tell_level(self, level: str, trigger: str, position: int | None) -> None:
        """Pass the degradation level to every serving worker (any thread)."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: no worker left to tell
            self._loop.call_soon_threadsafe(self._send_level, level, trigger, position, None)

    def _send_level(
        self, level: str, trigger: str, position: int | None, only: _Slot | None
    ) -> None:
        message = {"event": "level", "level": level, "trigger": trigger, "position": position}
        line = json.dumps(message).encode() + b"\n"
        for slot in self._slots if only is None else [only]:
            if slot.control is not None and (slot.serving or slot is only):
                slot.control.write(line)

    async def _until_ready(self, slot: _Slot, reader: asyncio.StreamReader) -> bytes:
        """The worker's ready line, or b"" if it closed the socket first; what
        it says before (its start-up check's findings) is heard."""
        while line := await reader.readline():
            if _says_ready(line):
                return line
            self._heard(slot, line)
        return b""

    async def _listen(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        """What a worker says after it serves: admin calls, corruption it found."""
        while line := await reader.readline():
            self._heard(slot, line)

    def _heard(self, slot: _Slot, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if isinstance(message, dict):
            if message.get("event") == "admin":
                task = asyncio.get_running_loop().create_task(self._admin(slot, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif message.get("event") == "corruption":
                finding = Finding(str(message["what"]), message.get("position"),
                                  str(message["message"]))  # fmt: skip
                self._ops.controller.corruption_found(finding)

    async def _admin(self, slot: _Slot, message: dict[str, object]) -> None:
        """Do an admin call a worker was asked (on a thread: it commits) and answer it."""
        controller = self._ops.controller
        op, reason, level = message.get("op"), str(message.get("reason", "")), message.get("level")
        loop = asyncio.get_running_loop()
        reply: dict[str, object] = {"event": "admin-reply", "id": message.get("id")}
        try:
            if op == "degrade":
                status = await loop.run_in_executor(None, controller.degrade, str(level), reason)
            elif op == "recover":
                status = await loop.run_in_executor(None, controller.recover, reason)
            else:
                status = controller.status()
            reply["status"] = status
        except Exception as exc:  # the worker answers its caller with an error
            log.exception("the admin call %s failed", op)
            reply["error"] = getattr(exc, "message", type(exc).__name__)
        if slot.control is not None:
            slot.control.write(json.dumps(reply).encode() + b"\n")

    async def _watch(self, slot: _Slot) -> None:
        """Restart the worker of ``slot`` whenever it exits, until shutdown."""
        loop = asyncio.get_running_loop()
        while slot.proc is not None:
            code = await slot.proc.wait()
            slot.serving = False
            self._ops.worker_exited(slot.proc.pid)
            if self._stop.is_set():
                return
            self._close_control(slot)
            freed = self._store.reader_check()
            lived = loop.time() - slot.started
            slot.quick_exits = slot.quick_exits + 1 if lived < HEALTHY_AFTER_S else 1
            delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** (slot.quick_exits - 1))
            log.error(
                "worker %d (pid %d) %s after %.1f s; freed %d stale LMDB reader slots;"
                " restarting it in %.1f s",
                slot.index, slot.proc.pid, _exit_text(code), lived, freed, delay,
                extra={"fields": {"worker": slot.index, "pid": slot.proc.pid, "exit": code}},
            )  # fmt: skip
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            except TimeoutError:
                pass
            await self._start(slot)

    async def _shut_down(self) -> bool:
        """SIGTERM every worker and wait for each to drain; False if one had
        to be killed."""
        self._stop.set()
        draining = [slot for slot in self._slots if slot.alive()]
        for slot in draining:
            assert slot.proc is not None
            slot.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.shutdown_grace_seconds + DRAIN_MARGIN_S
        clean = True
        for slot in draining:
            assert slot.proc is not None
            try:
                code = await asyncio.wait_for(slot.proc.wait(), max(0.0, deadline - loop.time()))
                log.info("worker %d (pid %d) %s", slot.index, slot.proc.pid, _exit_text(code))
            except TimeoutError:
                log.error("worker %d (pid %d) did not drain in time; killing it",
                          slot.index, slot.proc.pid)  # fmt: skip
                clean = False
                await self._kill(slot)
        return clean

    def _forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker; safe in a signal handler (no asyncio)."""
        for slot in self._slots:
            if slot.alive():
                assert slot.proc is not None
                with contextlib.suppress(ProcessLookupError):  # it just died; _watch restarts it
                    os.kill(slot.proc.pid, sig)

    async def _kill(self, slot: _Slot) -> None:
        if slot.alive():
            assert slot.proc is not None
            slot.proc.kill()
            await slot.proc.wait()
        self._close_control(slot)

    def _close_control(self, slot: _Slot) -> None:
        if slot.control is not None:
            slot.control.close()
            slot.control = None


def _worker_command(control_fd: int) -> list[str]:
    # -P: not the working directory first on sys.path; the worker runs the
    # lighthouse_store this process runs (_worker_environment).
    return [
        sys.executable, "-P", "-m", "lighthouse_store.worker",
        "--control-fd", str(control_fd), "--supervisor-pid", str(os.getpid()),
    ]  # fmt: skip


def _worker_environment(extra: dict[str, str]) -> dict[str, str]:
    package_root = str(Path(lighthouse_store.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, path) if p),
        **extra,
    }


def _says_ready(line: bytes) -> bool:
    try:
        message = json.loads(line) if line else None
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("event") == "ready"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
