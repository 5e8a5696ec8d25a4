"""Who may do what: bearer tokens, client certificates, and roles per stream prefix.

The tokens file
===============

``--tokens-file`` names a TOML file that holds principals, never a token::

    [principals.billing]
    token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    common_names = ["billing.internal"]     # optional: client certificates (mTLS)
    grants = [
      { prefix = "billing-", roles = ["read", "append", "consume:billing"] },
      { prefix = "orders-", roles = ["read"] },
    ]

``token_sha256`` is the SHA-256 (hex) of the principal's bearer token; a
token is high-entropy (``lighthouse-store token`` makes one and its hash), so
a hash is as good as a salted one and the file leaks nothing usable.
``common_names`` lets a client certificate's subject CN name the principal
when the daemon requires client certificates (``--tls-client-ca``). A
principal needs at least one of the two. SIGHUP reads the file again; a file
that no longer parses leaves the old principals in force.

Roles, per grant, on every stream whose name starts with ``prefix`` (``""``:
every stream):

- ``read``: Read, GetEvent, Subscribe;
- ``append``: Append;
- ``consume:<consumer-prefix>``: subscribe as a durable consumer whose name
  starts with ``<consumer-prefix>``, and so ack (move its checkpoint) and
  resume; it needs ``read`` as well;
- ``admin``: every role above on the grant's streams, appends to system
  streams (``$``-prefixed: ``$system`` is written by the store itself and
  by admins only), and the admin service (``lighthouse.store.v1.AdminService``:
  degrade, recover, status).

The default is deny: what no grant allows is ``PERMISSION_DENIED``. ``$all``
(a Read of ``$all``, every subscription) needs ``read`` on ``""``, unless its
filter names only stream prefixes and streams that the principal may read:
then every event it can return is one the principal may read anyway.
GetEvent of an event on a stream the principal may not read answers
``NOT_FOUND``, as for an id that does not exist: event ids are not secret,
but whether one exists on another service's stream should not be probed.
GetInfo needs only a known principal; health and reflection need nothing
(load balancers and grpcurl use them).

Authentication
==============

Each call is authenticated once (``servicer._guard`` calls
:meth:`Access.authenticate`): the ``authorization`` metadata
``Bearer <token>`` is hashed and compared with every principal's hash in
constant time (``hmac.compare_digest``, no early exit); without a token, the
client certificate's CN. No credentials, or unknown ones:
``UNAUTHENTICATED``. Without ``--tokens-file`` nobody is authenticated and
everything is allowed, as for a loopback-only daemon (``transport.py``
refuses to listen elsewhere so, unless ``--insecure``); the start-up log says
which.

Audit
=====

A refused call (``UNAUTHENTICATED`` or ``PERMISSION_DENIED``) is logged on
``lighthouse_store.audit`` with the principal (or ``unknown``), the RPC, the
stream and the peer, once per principal, peer host and kind of refusal per
minute (a flood of refusals is one line a minute), and never with the token.
The servicer's own line for a failed request is not written for these.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc

from lighthouse_store import records
from lighthouse_store.errors import PermissionDenied, Unauthenticated
from lighthouse_store.principals import Principal, anonymous, peer_host
from lighthouse_store.settings import ConfigError

log = logging.getLogger("lighthouse_store.access")
audit_log = logging.getLogger("lighthouse_store.audit")

ALL = "$all"
SYSTEM_PREFIX = "$"
AUDIT_EVERY_S = 60.0
AUDIT_MEMORY = 10_000  # (principal, peer, kind) entries remembered; oldest go first
_BEARER = "bearer "


class Role(StrEnum):
    READ = "read"
    APPEND = "append"
    ADMIN = "admin"


CONSUME = "consume:"


@dataclass(frozen=True, slots=True)
class Grant:
    prefix: str
    roles: frozenset[str]  # Role values; consume grants kept apart
    consumer_prefixes: tuple[str, ...]

    def covers(self, stream: str) -> bool:
        return stream.startswith(self.prefix)

    def allows(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles


@dataclass(frozen=True, slots=True)
class Entry:
    """One principal of the tokens file."""

    name: str
    token_hash: bytes | None
    common_names: frozenset[str]
    grants: tuple[Grant, ...]

    def may(self, role: Role, stream: str) -> bool:
        return any(g.covers(stream) and g.allows(role) for g in self.grants)

    def may_consume(self, consumer: str, stream: str) -> bool:
        return any(
            g.covers(stream)
            and (Role.ADMIN in g.roles or any(consumer.startswith(c) for c in g.consumer_prefixes))
            for g in self.grants
        )

    @property
    def admin(self) -> bool:
        return any(Role.ADMIN in g.roles for g in self.grants)


def new_token() -> tuple[str, str]:
    """A new bearer token (256 random bits) and the hash that goes in the file."""
    token = "lh_" + secrets.token_urlsafe(32)
    return token, token_hash(token).hex()


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load(path: Path) -> dict[str, Entry]:
    """The principals of a tokens file; ConfigError naming what is wrong."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"tokens file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"tokens file {path}: not valid TOML ({exc})") from None
    return parse(raw, str(path))


def parse(raw: Mapping[str, Any], where: str) -> dict[str, Entry]:
    unknown = set(raw) - {"principals"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected [principals.NAME]")
    principals = raw.get("principals", {})
    if not isinstance(principals, dict):
        raise ConfigError(f"{where}: principals must be a table of [principals.NAME]")
    entries: dict[str, Entry] = {}
    seen_hashes: dict[bytes, str] = {}
    for name, body in principals.items():
        entry = _entry(name, body, f"{where}: principals.{name}")
        if entry.token_hash is not None:
            if entry.token_hash in seen_hashes:
                raise ConfigError(
                    f"{where}: principals {seen_hashes[entry.token_hash]} and"
                    f" {name} have the same token_sha256"
                )
            seen_hashes[entry.token_hash] = name
        entries[name] = entry
    return entries


def _entry(name: str, body: object, where: str) -> Entry:
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(body) - {"token_sha256", "common_names", "grants"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    digest: bytes | None = None
    if "token_sha256" in body:
        text = body["token_sha256"]
        try:
            digest = bytes.fromhex(text) if isinstance(text, str) else b""
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"{where}: token_sha256 must be 64 hex digits (a SHA-256)")
    names = body.get("common_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: common_names must be a list of non-empty strings")
    if digest is None and not names:
        raise ConfigError(f"{where}: needs token_sha256 or common_names (or both)")
    grants = body.get("grants", [])
    if not isinstance(grants, list):
        raise ConfigError(f"{where}: grants must be a list of {{prefix, roles}} tables")
    return Entry(
        name,
        digest,
        frozenset(names),
        tuple(_grant(g, f"{where}.grants[{i}]") for i, g in enumerate(grants)),
    )


def _grant(raw: object, where: str) -> Grant:
    if not isinstance(raw, dict) or set(raw) != {"prefix", "roles"}:
        raise ConfigError(f'{where}: must be {{prefix = "...", roles = [...]}}')
    prefix, roles = raw["prefix"], raw["roles"]
    if not isinstance(prefix, str):
        raise ConfigError(f'{where}: prefix must be a string ("" for every stream)')
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}: roles must be a non-empty list of strings")
    plain, consumers = set(), []
    for role in roles:
        if role.startswith(CONSUME):
            consumers.append(role[len(CONSUME) :])
        elif role in Role.__members__.values():
            plain.add(role)
        else:
            raise ConfigError(
                f"{where}: unknown role {role!r}; roles are read, append,"
                " admin and consume:<consumer-prefix>"
            )
    return Grant(prefix, frozenset(plain), tuple(consumers))


class Audit:
    """Refusals, logged once per (principal, peer host, kind) per minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def refused(self, kind: str, principal: str, rpc: str, stream: str, peer: str) -> None:
        key = (principal, peer_host(peer), kind)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < AUDIT_EVERY_S:
                return
            self._last.pop(key, None)
            self._last[key] = now
            while len(self._last) > AUDIT_MEMORY:
                del self._last[next(iter(self._last))]
        fields = {"audit": kind, "principal": principal, "rpc": rpc, "stream": stream,
                  "peer": peer}  # fmt: skip
        audit_log.warning("%s: %s %s on %r from %s", kind, principal, rpc, stream, peer,
                          extra={"fields": fields})  # fmt: skip


class Access:
    """The daemon's policy: who each call is (:meth:`authenticate`) and whether it
    may do what it asks (:meth:`check_*`). ``entries`` None: no tokens file,
    everything allowed."""

    def __init__(self, entries: dict[str, Entry] | None, path: Path | None = None) -> None:
        self._entries = entries
        self._path = path
        self.audit = Audit()

    @classmethod
    def open(cls) -> Access:
        return cls(None)

    @classmethod
    def from_file(cls, path: str) -> Access:
        """The policy of ``--tokens-file`` (``""``: none, everything allowed)."""
        if not path:
            return cls.open()
        return cls(load(Path(path)), Path(path))

    @property
    def enabled(self) -> bool:
        return self._entries is not None

    def reload(self) -> None:
        """SIGHUP: read the tokens file again; keep the old principals if it is broken."""
        if self._path is None:
            return
        try:
            self._entries = load(self._path)
        except ConfigError as exc:
            log.error("SIGHUP: the tokens file was not reloaded, the old one stays: %s", exc)
            return
        log.info("SIGHUP: tokens file reloaded: %d principals", len(self._entries))

    # -- authentication ---------------------------------------------------

    def authenticate(self, context: grpc.aio.ServicerContext, rpc: str) -> Principal:
        entries = self._entries
        if entries is None:
            return anonymous(context)
        peer = context.peer() or ""
        token = _bearer(context.invocation_metadata() or ())
        if token is not None:
            digest = token_hash(token)
            found: Entry | None = None
            for entry in entries.values():  # every one compared: no early exit
                if entry.token_hash is not None and hmac.compare_digest(digest, entry.token_hash):
                    found = entry
            if found is not None:
                return Principal(found.name, authenticated=True, peer=peer)
            self._refuse_unknown(rpc, peer, "the bearer token is not known")
        common_name = _common_name(context)
        if common_name:
            for entry in entries.values():
                if common_name in entry.common_names:
                    return Principal(entry.name, authenticated=True, peer=peer)
            self._refuse_unknown(rpc, peer, "the client certificate names no principal")
        self._refuse_unknown(
            rpc,
            peer,
            "no credentials: send the metadata"
            " 'authorization: Bearer <token>' or a client certificate",
        )
        raise AssertionError("unreachable")

    def _refuse_unknown(self, rpc: str, peer: str, why: str) -> None:
        self.audit.refused("unauthenticated", "unknown", rpc, "", peer)
        raise Unauthenticated(why)

    # -- permissions ------------------------------------------------------

    def _entry(self, principal: Principal) -> Entry | None:
        entries = self._entries
        return None if entries is None else entries.get(principal.name)

    def check_append(self, principal: Principal, rpc: str, stream: str) -> None:
        entry = self._entry(principal)
        if self._entries is None:
            return
        if entry is not None:
            if stream.startswith(SYSTEM_PREFIX):
                if entry.admin:
                    return
            elif entry.may(Role.APPEND, stream):
                return
        self._deny(principal, rpc, stream, f"may not append to {stream!r}")

    def check_read(self, principal: Principal, rpc: str, stream: str) -> None:
        if self._entries is None:
            return
        entry = self._entry(principal)
        if entry is None or not entry.may(Role.READ, stream):
            self._deny(principal, rpc, stream, f"may not read {stream!r}")

    def may_read(self, principal: Principal, stream: str) -> bool:
        if self._entries is None:
            return True
        entry = self._entry(principal)
        return entry is not None and entry.may(Role.READ, stream)

    def may_see(self, principal: Principal, rpc: str, record: bytes) -> bool:
        """Whether a found event's stream is readable; a hidden one is audited."""
        if self._entries is None:
            return True
        stream = records.decode(record).stream
        if self.may_read(principal, stream):
            return True
        self.audit.refused("permission_denied", principal.name, rpc, stream, principal.peer)
        return False

    def check_read_all(
        self, principal: Principal, rpc: str, prefixes: Iterable[str], streams: Iterable[str]
    ) -> None:
        """``$all``, filtered by ``prefixes`` and ``streams`` (both empty: unfiltered)."""
        if self._entries is None:
            return
        entry = self._entry(principal)
        if entry is not None:
            if entry.may(Role.READ, ""):
                return
            named = [*prefixes, *streams]
            if named and all(entry.may(Role.READ, name) for name in named):
                return
        self._deny(
            principal,
            rpc,
            ALL,
            "may not read $all beyond its own streams (filter by"
            " stream prefixes or streams it may read)",
        )

    def check_consumer(
        self, principal: Principal, rpc: str, consumer: str, names: Iterable[str]
    ) -> None:
        """A durable consumer over the streams ``names`` (prefixes and streams of
        its filter; none: every stream)."""
        if self._entries is None:
            return
        entry = self._entry(principal)
        streams = list(names) or [""]
        if entry is None or not all(entry.may_consume(consumer, s) for s in streams):
            self._deny(principal, rpc, ALL, f"may not consume as {consumer!r}")

    def check_admin(self, principal: Principal, rpc: str) -> None:
        if self._entries is None:
            return
        entry = self._entry(principal)
        if entry is None or not entry.admin:
            self._deny(principal, rpc, "", "is not an admin")

    def _deny(self, principal: Principal, rpc: str, stream: str, what: str) -> None:
        self.audit.refused("permission_denied", principal.name, rpc, stream, principal.peer)
        raise PermissionDenied(f"principal {principal.name!r} {what}")


def _bearer(metadata: Iterable[Any]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip()
            return ""  # another scheme: a token that is not known
    return None


def _common_name(context: grpc.aio.ServicerContext) -> str:
    try:
        names = context.auth_context().get("x509_common_name") or []
    except Exception:  # a test double, or no transport security
        return ""
    return names[0].decode(errors="replace") if names else ""
