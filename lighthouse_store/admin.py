"""``lighthouse.store.v1.AdminService``: operators force a degradation level and clear it.

``Degrade(reason, level)``, ``Recover(reason)`` and ``GetStatus`` call the
process's :class:`~lighthouse_store.ops.Admin`: the degradation controller
itself with one process, or, in a worker, a forwarder that asks the
supervisor over the control socket (``worker.py``), since the supervisor's
controller decides for every worker. ``Degrade`` and ``Recover`` return once
the ``EmergencyOperation`` event and the level's own event are in
``$system`` and the level is in effect in the process that answered (every
other worker follows within a second). The calls block on a commit, so they
run on a thread, not the event loop. Errors go through ``status.to_status``
as everywhere else; a call needs a ``reason`` (it is recorded).

No authentication: like the rest of the API, the daemon listens on a
loopback or private address, and whoever can append can also reach this.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc
from lighthouse_store import status
from lighthouse_store.access import Access
from lighthouse_store.degradation import DEGRADED, WARNING
from lighthouse_store.errors import InvalidArgument, PermissionDenied, StoreError, Unauthenticated
from lighthouse_store.ops import Admin

__all__ = ["ADMIN_SERVICE_NAME", "AdminServicer", "add_to_server", "main", "status_message"]

log = logging.getLogger("lighthouse_store.admin")

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"]
ADMIN_SERVICE_NAME: str = ADMIN_SERVICE.full_name
MAX_REASON = 1_000


def status_message(s: dict[str, Any]) -> pb.DegradationStatus:
    return pb.DegradationStatus(
        level=s["level"],
        trigger=s["trigger"],
        forced_level=s["forced_level"],
        figures_json=json.dumps(s["figures"], sort_keys=True),
    )


def _reason(reason: str) -> str:
    if not reason.strip():
        raise InvalidArgument("reason: required (it is recorded in $system)")
    if len(reason) > MAX_REASON:
        raise InvalidArgument(f"reason: at most {MAX_REASON} characters")
    return reason


class AdminServicer:
    def __init__(self, admin: Admin, access: Access | None = None) -> None:
        self._admin = admin
        self._access = access or Access.open()  # admins only, with a tokens file

    async def _call(
        self, context: grpc.aio.ServicerContext, name: str, fn: Callable[[], dict[str, Any]]
    ) -> pb.DegradationStatus:
        try:
            self._access.check_admin(self._access.authenticate(context, name), name)
            return status_message(await asyncio.to_thread(fn))
        except Exception as exc:  # the level's event not written, most likely
            error = exc if isinstance(exc, StoreError) else status.internal(uuid.uuid4().hex[:12])
            code, message, trailers = status.to_status(error)
            if not isinstance(error, Unauthenticated | PermissionDenied):  # audited
                log.log(status.log_level(error, code), "%s failed: %s: %s", name, code.name,
                        message, exc_info=None if error is exc else exc)  # fmt: skip
            await context.abort(code, message, trailing_metadata=trailers)
            raise AssertionError("unreachable: abort raises") from exc

    async def degrade(
        self, request: pb.DegradeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DegradeResponse:
        def call() -> dict[str, Any]:
            level = request.level or DEGRADED
            if level not in (WARNING, DEGRADED):
                raise InvalidArgument("level: must be warning or degraded")
            return self._admin.degrade(level, _reason(request.reason))

        return pb.DegradeResponse(status=await self._call(context, "Degrade", call))

    async def recover(
        self, request: pb.RecoverRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecoverResponse:
        status = await self._call(context, "Recover", lambda: self._admin.recover(
            _reason(request.reason)))  # fmt: skip
        return pb.RecoverResponse(status=status)

    async def get_status(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        return pb.GetStatusResponse(
            status=await self._call(context, "GetStatus", self._admin.status)
        )


def _parsing(
    fn: Callable[[Any, grpc.aio.ServicerContext], Any], parse: Callable[[bytes], Any]
) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    """``fn`` on the parsed request; a request that is no valid message is
    INVALID_ARGUMENT with its details, as on the store service (never gRPC's
    UNKNOWN naming a protobuf exception)."""

    async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = parse(raw)
        except DecodeError:
            error = InvalidArgument("request: not a valid admin request message")
            code, message, trailers = status.to_status(error)
            await context.abort(code, message, trailing_metadata=trailers)
        return await fn(request, context)

    return handler


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def add_to_server(server: grpc.aio.Server, servicer: AdminServicer) -> None:
    implementations: dict[str, tuple[Callable[..., Any], Callable[[bytes], Any]]] = {
        "Degrade": (servicer.degrade, pb.DegradeRequest.FromString),
        "Recover": (servicer.recover, pb.RecoverRequest.FromString),
        "GetStatus": (servicer.get_status, pb.GetStatusRequest.FromString),
    }  # the responses: each a message with a ``status``
    assert implementations.keys() == {m.name for m in ADMIN_SERVICE.methods}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _parsing(fn, parse),
            request_deserializer=None,  # bytes: parsed in _parsing, where a bad one is answered
            response_serializer=_serialize,
        )
        for name, (fn, parse) in implementations.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(ADMIN_SERVICE_NAME, handlers),)
    )


CALL_TIMEOUT_S = 90.0


def _channel(address: str, tls: tuple[str, str, str] | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    ca, cert, key = (Path(f).read_bytes() if f else None for f in tls)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert))


def main(
    address: str,
    action: str,
    reason: str,
    level: str,
    *,
    token: str = "",
    tls: tuple[str, str, str] | None = None,
) -> int:
    """``lighthouse-store admin ACTION``: print the status as JSON; exit 0,
    or 1 with the daemon's error. ``tls``: CA, client cert, client key files."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    call = {"timeout": CALL_TIMEOUT_S, "metadata": metadata}
    with _channel(address, tls) as channel:
        stub = store_pb2_grpc.AdminServiceStub(channel)
        try:
            if action == "degrade":
                reply = stub.Degrade(pb.DegradeRequest(reason=reason, level=level), **call)
            elif action == "recover":
                reply = stub.Recover(pb.RecoverRequest(reason=reason), **call)
            else:
                reply = stub.GetStatus(pb.GetStatusRequest(), **call)
            status = reply.status
        except grpc.RpcError as exc:
            print(f"lighthouse-store: admin {action}: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)  # fmt: skip
            return 1
    print(json.dumps({
        "level": status.level,
        "trigger": status.trigger,
        "forced_level": status.forced_level,
        "figures": json.loads(status.figures_json or "{}"),
    }))  # fmt: skip
    return 0
