"""Transport security: TLS on the gRPC port, and no serving in the open by accident.

TLS
===

``--tls-cert`` and ``--tls-key`` (PEM) turn the gRPC port to TLS;
``--tls-client-ca`` makes a client certificate signed by one of its CAs
mandatory (mTLS), and the certificate's CN can then name a principal of the
tokens file (``access.py``). Every worker process binds the port with the
same credentials. The credentials are gRPC's *dynamic* server credentials: on
SIGHUP (``signals.py``; a supervisor forwards it to every worker) the files
are read again and the new certificate is handed to gRPC at the next
handshake. Connections already open keep theirs, so nothing is dropped; a
file that cannot be read leaves the old certificate in force, with an error
line.

Secure by default
=================

A daemon that serves on anything but a loopback address must have both TLS
and a tokens file, or be told ``--insecure``: otherwise it refuses to start
and says why (:func:`check`). A hostname other than ``localhost`` counts as
not loopback, since what it resolves to can change.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from lighthouse_store import access
from lighthouse_store.settings import ConfigError

if TYPE_CHECKING:
    from lighthouse_store.config import Config

log = logging.getLogger("lighthouse_store.transport")


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(listen: str, *, tls: bool, tokens: bool, insecure: bool) -> None:
    """Refuse settings that would serve in the open (ConfigError saying why)."""
    if is_loopback(listen) or insecure or (tls and tokens):
        return
    missing = [what for what, have in (("TLS (--tls-cert, --tls-key)", tls),
                                       ("tokens (--tokens-file)", tokens)) if not have]  # fmt: skip
    raise ConfigError(
        f"--listen is {listen}, not a loopback address, and there is"
        f" no {' and no '.join(missing)}: any host that reaches the port could read and"
        " write every stream. Configure them, or give --insecure to serve so anyway."
    )


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str = ""

    def read(self) -> grpc.ServerCertificateConfiguration:
        """The files as gRPC takes them; OSError if one cannot be read."""
        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        pair = (Path(self.key).read_bytes(), Path(self.cert).read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)


class ServerTls:
    """The port's credentials, and their reload."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        try:
            initial = files.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the TLS files: {exc.strerror}: {exc.filename}"
            ) from None
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            initial, self._fetch, require_client_authentication=bool(files.client_ca)
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC at each handshake: a reloaded configuration, once."""
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> None:
        try:
            self._pending = self._files.read()
        except OSError as exc:
            log.error("SIGHUP: the TLS files were not reloaded, the old ones stay: %s: %s",
                      exc.strerror, exc.filename)  # fmt: skip
            return
        log.info("SIGHUP: TLS certificate reloaded; new connections get it")


def server_tls(cert: str, key: str, client_ca: str) -> ServerTls | None:
    if not cert:
        return None
    return ServerTls(TlsFiles(cert, key, client_ca))


def check_serving(cfg: Config) -> None:
    """What ``serve`` needs beyond each setting's own bounds (ConfigError):
    TLS files that go together and can be read, a tokens file that parses,
    and no serving in the open (:func:`check`). The tools (verify, backup,
    ...) resolve the same settings without serving, so this is not part of
    resolving them."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if cfg.tls_client_ca and not cfg.tls_cert:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    if cfg.tokens_file:
        access.load(Path(cfg.tokens_file))  # each serving process loads it again
    server_tls(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
    check(cfg.listen, tls=bool(cfg.tls_cert), tokens=bool(cfg.tokens_file),
          insecure=cfg.insecure)  # fmt: skip
