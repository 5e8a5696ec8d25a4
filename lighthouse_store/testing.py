"""Public test helpers: run a real daemon as a subprocess on loopback.

The tests and the perf harness both use :class:`DaemonProcess`, so that each
talks to the same thing users run: ``python -m lighthouse_store serve`` on
127.0.0.1, with real LMDB files in a directory the caller owns.

The daemon prints one JSON line to stdout once it accepts connections::

    {"event": "ready", "address": "127.0.0.1:41234", "pid": 12345, "http": "127.0.0.1:41235"}

(with ``"workers": N`` when a supervisor runs N worker processes; ``http``
the operations endpoint). Its logs go to stderr, which this helper sends to
``<log_path>``.

``http_listen`` defaults to ``127.0.0.1:0`` here (a free port, which
:attr:`DaemonProcess.http_address` names), not to the daemon's fixed
default, so that daemons started side by side never collide.

``workers`` defaults to 1 here (one process, as the tests mostly want on a
small machine), not to the daemon's default of one per usable CPU.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import grpc
import lmdb

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store import lmdb_format

__all__ = ["DaemonProcess", "DaemonStartError"]


class DaemonStartError(RuntimeError):
    """The daemon exited or did not become ready in time."""


class DaemonProcess:
    """One daemon subprocess on a data directory; restartable, killable."""

    def __init__(
        self,
        data_dir: Path,
        *,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        port: int = 0,
        cwd: Path | None = None,
        workers: int = 1,
        http_listen: str = "127.0.0.1:0",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.http_listen = http_listen
        self.workers = workers
        self.extra_args = list(extra_args)
        self.env = env
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}.log"
        self.port = port
        # ``python -m`` puts the working directory first on sys.path, so the
        # daemon runs the lighthouse_store found there, if there is one.
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.http_address = ""  # host:port of the HTTP endpoint; "" when off
        self.ready: dict[str, Any] = {}  # the ready line, as the daemon printed it
        self._log: IO[bytes] | None = None
        self._channels: list[grpc.Channel] = []

    # -- process control -------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lighthouse_store",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
            "--http-listen",
            self.http_listen,
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        """Start the daemon and wait for its ready line."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("daemon already running")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=self.cwd
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            # Wait for a line without blocking past the deadline (a hung daemon).
            readable, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not readable:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            try:
                msg: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if msg.get("event") == "ready":
                self.ready = msg
                self.address = str(msg["address"])
                # Keep the ports so a restart comes back on the same addresses.
                self.port = int(self.address.rsplit(":", 1)[1])
                self.http_address = str(msg.get("http", ""))
                if self.http_address:
                    self.http_listen = self.http_address
                return self
        try:
            code: int | None = self.proc.wait(1)  # reap it, so the exit code is known
        except subprocess.TimeoutExpired:
            code = None  # still running but never said it was ready
        self._reap(kill=True)
        raise DaemonStartError(
            f"daemon did not become ready (exit code {code}); log:\n{self.log_text()[-4000:]}"
        )

    def write_transactions(self) -> int:
        """LMDB write transactions committed so far in the daemon's store
        (``last_txnid``), read from the meta pages through a read-only handle
        without a read transaction, so the daemon is not held up."""
        path = lmdb_format.env_path(self.data_dir)
        env = lmdb.open(str(path), readonly=True, create=False, max_dbs=0)
        try:
            return int(env.info()["last_txnid"])
        finally:
            env.close()

    def corrupt_record(self, position: int, at: int | None = None) -> None:
        """:func:`corrupt_record` in this daemon's store, which must be
        stopped. (It checks its newest records when it opens the store, so
        corrupting one of those makes it start read-only.)"""
        if self.running():
            raise RuntimeError("stop the daemon before corrupting its store")
        corrupt_record(self.data_dir, position, at)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or ``sig``: SIGINT stops the daemon the same way), wait,
        return the exit code."""
        return self._signal_and_wait(sig, timeout)

    def kill9(self) -> int:
        """SIGKILL, as a crash would (to the supervisor, when there are
        workers: the kernel kills them as it dies, without waiting)."""
        return self._signal_and_wait(signal.SIGKILL, 30.0)

    def restart(self) -> DaemonProcess:
        self.stop()
        return self.start()

    @property
    def pid(self) -> int:
        """The process started: the daemon, or the supervisor of its workers."""
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        """The pids of the daemon's child processes (its workers; none with
        ``workers=1``), from ``/proc`` (Linux)."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread (or the process) is gone
        return sorted(pids)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal_and_wait(self, sig: int, timeout: float) -> int:
        self.close_channels()
        if self.proc is None:
            raise RuntimeError("daemon not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            self._reap(kill=True)
        return code

    def _reap(self, *, kill: bool) -> None:
        if self.proc is not None:
            if kill and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- clients ---------------------------------------------------------

    def channel(self, worker: int | None = None) -> grpc.Channel:
        """A new channel to the daemon (:meth:`connect`), closed when the
        daemon is stopped."""
        ch = self.connect(worker)
        self._channels.append(ch)
        return ch

    def connect(self, worker: int | None = None, attempts: int = 200) -> grpc.Channel:
        """A new channel to the daemon on a connection of its own (gRPC would
        otherwise share one between channels alike, and with several workers
        every channel would reach the same one); the caller closes it.
        ``worker``: the pid of the worker process it must reach (one of
        :meth:`worker_pids`); the kernel picks a worker for each new
        connection, so this connects until one reaches it."""
        for _ in range(attempts):
            ch = grpc.insecure_channel(
                self.address,
                options=[
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
            if worker is None or self._worker_of(ch) == worker:
                return ch
            ch.close()
        raise RuntimeError(f"no connection reached worker {worker} in {attempts} attempts")

    @staticmethod
    def _worker_of(ch: grpc.Channel) -> int:
        info = pb_grpc.EventStoreServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=30)
        return int(info.worker_pid)

    def stub(self, worker: int | None = None) -> Any:
        """An EventStoreService stub on a new channel (to ``worker``: :meth:`channel`)."""
        return pb_grpc.EventStoreServiceStub(self.channel(worker))

    def close_channels(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running():
            self.stop()
        else:
            self._reap(kill=True)


def corrupt_record(data_dir: Path, position: int, at: int | None = None) -> None:
    """Flip one byte of the stored record at ``position`` (the ``log``
    database of ``lmdb_format.py``, under ``data_dir``), so that its checksum
    fails when it is next read: the byte at offset ``at`` (negative: from the
    end), by default the middle one. Nothing may have the store open."""
    env = lmdb.open(str(lmdb_format.env_path(data_dir)), create=False, max_dbs=lmdb_format.MAX_DBS)
    try:
        log = env.open_db(lmdb_format.LOG, create=False)
        key = lmdb_format.U64.pack(position)
        with env.begin(write=True) as txn:
            raw = txn.get(key, db=log)
            if raw is None:
                raise KeyError(f"no stored record at position {position}")
            record = bytearray(raw)
            record[len(record) // 2 if at is None else at] ^= 0xFF
            txn.put(key, bytes(record), db=log)
    finally:
        env.close()
