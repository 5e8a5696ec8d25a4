"""TLS and bearer tokens, as the client sends them.

``Tls`` holds what the channel needs: the CA that signed the daemon's
certificate (None: the system's roots) and, for mTLS, the client's own
certificate and key, each as a path or as PEM bytes. The token is a string
or a callable that returns the current one (called before every call, so a
token that expires can be refreshed by the caller's own code); it goes in the
``authorization`` metadata as ``Bearer <token>``, is never logged, and is not
in any repr.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = ["Metadata", "Tls", "Token", "auth_metadata"]

Pem = str | Path | bytes
Token = str | Callable[[], str]
Metadata = tuple[tuple[str, str], ...]


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Tls:
    ca: Pem | None = None
    cert: Pem | None = None
    key: Pem | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("Tls: cert and key go together (mTLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_pem(self.ca), _pem(self.key), _pem(self.cert))


def auth_metadata(token: Token | None) -> Metadata | None:
    """The call's metadata for ``token`` (None: no token, no metadata)."""
    if token is None:
        return None
    value = token() if callable(token) else token
    return (("authorization", f"Bearer {value}"),)
