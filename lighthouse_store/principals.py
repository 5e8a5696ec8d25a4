"""Who is calling: the :class:`Principal` every request is served for.

Every RPC handler is given the principal of its call by the servicer's guard
(``servicer._guard``), which asks ``access.Access.authenticate`` for it once
per call, before the handler runs. Permissions (who may do what) and quotas (how
much of the daemon one caller may use) are both keyed by the principal, so
that one flooding or misbehaving client is limited by itself alone.

Without authentication configured, every caller is :func:`anonymous`: its
name is ``anonymous`` and its :attr:`Principal.key` is the peer's host, so
quotas still apply per client host.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str  # a token's principal, a client certificate's subject, or "anonymous"
    authenticated: bool
    peer: str  # gRPC's peer string: "ipv4:127.0.0.1:51234"

    @property
    def key(self) -> str:
        """What quotas are counted by: the name, or the peer's host when anonymous
        (its port changes with each connection; its host does not)."""
        if self.authenticated:
            return self.name
        return "peer:" + peer_host(self.peer)



def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``ipv6:[::1]:5000`` -> ``[::1]``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer  # unix:..., or what a test double sends


def anonymous(context: grpc.aio.ServicerContext) -> Principal:
    """The principal of every call when no authentication is configured."""
    return Principal(ANONYMOUS, authenticated=False, peer=context.peer() or "")
