"""Other event stores the harness can measure beside ours (``--peer NAME``).

A peer is a module (``peer_<name>.py``) with two parts:

* ``Server(work_dir)``: a :class:`PeerServer`, the peer's server started as a
  user would start it, on 127.0.0.1 only, on a free port, with a fresh data dir
  under ``work_dir`` and its durable settings; stopped by its PID;
* ``driver(address, stream)``: one client of the peer through its own Python
  library (``user_clients.SyncDriver`` or ``AsyncDriver``, as :class:`Peer`'s
  ``style`` says), bound to one stream, in a client process.

:data:`PEERS` lists them. The coordinating process never imports a peer's
client library: only client processes do.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal


@dataclass(frozen=True)
class Peer:
    name: str  # as given to --peer, and in the metric names
    label: str  # as printed
    module: str  # the module with Server and driver
    package: str  # the Python distribution with its client (and, here, its server)
    client: str  # its client class, as printed
    style: Literal["sync", "asyncio"]  # its client: one per thread, or one per asyncio task


PEERS: dict[str, Peer] = {
    "umadb": Peer("umadb", "UmaDB", "peer_umadb", "umadb", "umadb.Client", "sync"),
}


def missing(name: str) -> str:
    """Why peer ``name`` cannot be measured here, or "" if it can."""
    if name not in PEERS:
        return f"unknown peer {name!r} (known: {', '.join(PEERS)})"
    package = PEERS[name].package
    if importlib.util.find_spec(package) is None:
        return (
            f"the {package!r} package is not installed: pip install -c constraints.txt "
            f"-e '.[perf]' (./dev setup does)"
        )
    return ""


def server(name: str, work: Path) -> PeerServer:
    """Peer ``name``'s server (not started), with its data and log under ``work``."""
    module = importlib.import_module(PEERS[name].module)
    srv: PeerServer = module.Server(work)
    return srv


class PeerServer(ABC):
    """A peer's server, one process on 127.0.0.1."""

    address: str  # host:port, once started
    pid: int

    @abstractmethod
    def start(self) -> None:
        """Start it on a free port of 127.0.0.1 and a new, empty data dir; return
        once it accepts connections."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it by its PID (SIGTERM, then SIGKILL); never leave it running."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Version, durability (and how that is known), command line, address, pid."""

    @abstractmethod
    def log_text(self) -> str: ...


class ProcessServer(PeerServer):
    """A server subprocess that is told to listen on 127.0.0.1:0 and does not
    say which port it got: the port is found from its listening socket."""

    def __init__(self, work: Path, name: str) -> None:
        self.work = work
        self.data_dir = work / f"{name}-data"
        self.log_path = work / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.pid = 0
        self._log: IO[bytes] | None = None

    @abstractmethod
    def command(self) -> list[str]:
        """The command line, listening on 127.0.0.1:0, data in ``self.data_dir``."""

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        self.data_dir.mkdir(parents=True, exist_ok=False)  # fresh: fails if it exists
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            ports = listening_ports(self.pid)
            if ports:
                host, port = ports[0]
                if len(ports) > 1 or host != "127.0.0.1":
                    self.stop()
                    raise RuntimeError(f"it listens on {ports}, not on 127.0.0.1 alone")
                self.address = f"{host}:{port}"
                return
            time.sleep(0.02)
        code = self.proc.poll()
        self.stop()
        raise RuntimeError(
            f"{self.command()[0]} did not listen within {timeout:g} s (exit code {code});"
            f" log:\n{self.log_text()[-3000:]}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def listening_ports(pid: int) -> list[tuple[str, int]]:
    """(IPv4 address, port) of every TCP socket process ``pid`` listens on, and
    ("::", port) style entries for IPv6 ones (Linux /proc); [] if unknown."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    found: list[tuple[str, int]] = []
    for table, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            addr, port = fields[1].split(":")
            found.append((_ipv6(addr) if v6 else _ipv4(addr), int(port, 16)))
    return found


def _ipv4(hex_le: str) -> str:
    return ".".join(str(b) for b in reversed(bytes.fromhex(hex_le)))


def _ipv6(hex_words: str) -> str:
    raw = b"".join(bytes.fromhex(hex_words[i : i + 8])[::-1] for i in range(0, 32, 8))
    return str(ipaddress.IPv6Address(raw))
