"""The supervisor's hold on the listen port, for workers that all bind it.

Workers each bind ``host:port`` with ``SO_REUSEPORT`` (gRPC's
``grpc.so_reuseport``), and the kernel spreads new connections over their
listening sockets (by a hash of each connection's addresses and ports).
Before any worker starts, the supervisor binds the same address with
``SO_REUSEPORT`` and never listens on it (:class:`PortReservation`):

- port ``0`` becomes a real port, which every worker then binds, and which
  the ready line names;
- the port stays taken while workers restart, even if all are down at once:
  a socket that is bound but not listening holds the port and is never
  given a connection;
- an address something else holds (without ``SO_REUSEPORT``) fails here,
  before any worker starts, as it does for a single process.

``SO_REUSEPORT`` would let another process of the same user join the group.
Another multi-worker daemon is kept out by a second, tiny reservation: an
abstract Unix socket named after the address, which a second supervisor
cannot bind while the first lives. (A single-process daemon binds without
``SO_REUSEPORT``, so the kernel keeps it and a worker group apart.)
"""

from __future__ import annotations

import socket

__all__ = ["BindError", "PortReservation"]


class BindError(RuntimeError):
    """The listen address could not be bound."""


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host, int(port)


class PortReservation:
    """``host:port`` held (bound, never listening) for the workers to bind."""

    def __init__(self, listen: str) -> None:
        host, port = _split(listen)
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except (OSError, UnicodeError) as exc:
            raise BindError(f"cannot listen on {listen} ({exc})") from None
        self._holder = socket.socket(family, socket.SOCK_STREAM)
        self._guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._holder.bind(sockaddr)
            port = self._holder.getsockname()[1]
            self.address = f"{host}:{port}"
            self._guard.bind(b"\0lighthouse-store/listen/" + self.address.encode())
        except OSError:
            self.close()
            raise BindError(
                f"cannot listen on {listen} (address in use or not available)"
            ) from None

    def close(self) -> None:
        self._holder.close()
        self._guard.close()
