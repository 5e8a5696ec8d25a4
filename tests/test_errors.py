"""The README's error table, row by row, against real daemons over real gRPC.

The table (README.md, "### Errors") is parsed here, so the README and the
daemon cannot drift apart: each row's condition is provoked on a daemon and
the answer's status code, ``ErrorInfo`` reason, domain and ``failure_class``
(from the ``grpc-status-details-bin`` trailer), and the extra fields the row
names, must be what the row says. Each row is also checked against the one
mapping (``status.to_status``), and every domain error class must have a row.

One row cannot be provoked from outside: ``INTERNAL`` is what an unexpected
exception (a bug) becomes, and the daemon has none on purpose. It is checked
at the mapping level only (``test_every_row_is_the_mapping_of_its_domain_error``).
``DataDirLocked`` and ``StoreDamaged`` have no row: they stop a daemon at
startup (exit status 3 and 4, README "Operations") and are never an RPC's answer.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import lmdb
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from subscriber import Subscriber
from support import (
    ERROR_DOMAIN,
    FULL_MAP_ARGS,
    DaemonFactory,
    append,
    append_request,
    events,
    head,
    new_event,
    rpc_error,
)

from lighthouse_proto.errors import FAILURE_CLASS_KEY
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store import access, errors, status
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True)
class Row:
    condition: str
    status: str  # a grpc.StatusCode name
    reason: str
    fields: tuple[str, ...]  # ErrorInfo metadata keys the row names, besides failure_class
    retry_info: bool  # the row names a google.rpc.RetryInfo detail
    failure_class: str


def readme_rows() -> list[Row]:
    """The rows of the table in the README's "### Errors" section."""
    text = README.read_text()
    section = text[text.index("\n### Errors\n") :]
    section = section[: section.index("\n## ")]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["condition", "status", "reason", "failure class"], header
    rows = []
    for line in lines[2:]:
        condition, code, reason, failure_class = (c.strip() for c in line.strip("|").split("|"))
        (code_name,) = re.findall(r"`([A-Z_]+)`", code)
        reason_name = re.findall(r"`([A-Z_]+)`", reason)[0]
        extra = re.search(r"\(\+ (.*)\)", reason)
        named = re.findall(r"`([\w.]+)`", extra.group(1)) if extra else []
        (failure,) = re.findall(r"`(\w+)`", failure_class)
        rows.append(Row(
            condition, code_name, reason_name,
            tuple(n for n in named if n != "google.rpc.RetryInfo"),
            "google.rpc.RetryInfo" in named, failure,
        ))  # fmt: skip
    return rows


ROWS = readme_rows()


def assert_row(row: Row, err: grpc.RpcError) -> None:
    """The answer is what the README row says, read from the trailers."""
    assert err.code() == getattr(grpc.StatusCode, row.status), (
        f"{row.condition}: got {err.code()} ({err.details()}), README says {row.status}"
    )
    details = rpc_status.from_call(err)
    assert details is not None, f"{row.condition}: no grpc-status-details-bin"
    infos, retry = [], []
    for detail in details.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            infos.append(error_details_pb2.ErrorInfo())
            detail.Unpack(infos[-1])
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry.append(error_details_pb2.RetryInfo())
            detail.Unpack(retry[-1])
    (info,) = infos
    assert (info.reason, info.domain) == (row.reason, ERROR_DOMAIN), info
    assert info.metadata[FAILURE_CLASS_KEY] == row.failure_class, info
    for field in row.fields:
        assert info.metadata.get(field), f"{row.condition}: no {field} in {info}"
    assert bool(retry) == row.retry_info, f"{row.condition}: RetryInfo {retry}"


# -- provoking each condition ---------------------------------------------


class Paused:
    """A daemon whose writer pauses 2 s after each commit of appends
    (``faults.py``), with one append committed and waiting out the pause."""

    def __init__(self, factory: DaemonFactory, *args: str) -> None:
        env = {**os.environ, COMMIT_PAUSE_MS: "2000"}
        self.daemon = factory(extra_args=["--max-queue", "1", *args], env=env)
        self.stub = self.daemon.stub()
        self.first = self.stub.Append.future(append_request("first", events(1)), timeout=60)
        deadline = time.monotonic() + 30
        while head(self.stub) < 1:  # committed: the writer is in its pause
            assert time.monotonic() < deadline, "the first append never committed"
            time.sleep(0.01)


def _invalid(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    stub = plain.stub()
    return [
        rpc_error(stub.Append, append_request("", events(1))),  # malformed
        rpc_error(stub.Append, append_request("s", events(1001))),  # over the 1,000 limit
    ]


def _wrong_revision(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    stub = plain.stub()
    append(stub, "revisions", events(2))
    return [rpc_error(stub.Append, append_request("revisions", events(1), expected=5))]


def _id_conflict(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    stub = plain.stub()
    first = new_event("T", b"one")
    append(stub, "conflict", first)
    again = new_event("T", b"two", event_id=first.event_id)
    return [rpc_error(stub.Append, append_request("conflict", [again]))]


def _stream_not_found(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    return [rpc_error(plain.stub().Read, pb.ReadRequest(stream="never-written"))]


def _event_not_found(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    request = pb.GetEventRequest(event_id=new_event().event_id)
    return [rpc_error(plain.stub().GetEvent, request)]


def _queue_full(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    paused = Paused(factory)  # --max-queue 1, held by the first append
    err = rpc_error(paused.stub.Append, append_request("second", events(1)))
    paused.first.result()
    return [err]


def _map_full(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d = factory(extra_args=FULL_MAP_ARGS)
    big = events(500, data=b"x" * 8000)  # 4 MB: more than the map holds
    return [rpc_error(d.stub().Append, append_request("s", big))]


def _shutting_down(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    paused = Paused(factory)
    subscription = Subscriber(paused.stub, pb.SubscribeOptions(from_end={}))
    subscription.next_kind("caught_up_position")
    os.kill(paused.daemon.pid, signal.SIGTERM)
    while subscription.next() is not None:  # ended once the daemon refuses appends
        pass
    assert subscription.error is not None
    late = rpc_error(paused.daemon.stub().Append, append_request("late", events(1)))
    paused.first.result()
    return [subscription.error, late]


def _corruption(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d = factory()
    evs = events(3)
    append(d.stub(), "s", evs)
    d.stop()
    d.corrupt_record(2)
    d.start()
    stub = d.stub()
    return [
        rpc_error(stub.Read, pb.ReadRequest(stream="$all")),
        rpc_error(stub.GetEvent, pb.GetEventRequest(event_id=evs[1].event_id)),
    ]


def _degraded(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    """The newest record corrupt: the daemon starts read-only (integrity.py)."""
    d = factory()
    append(d.stub(), "s", events(2))
    d.stop()
    d.corrupt_record(2)
    d.start()
    return [rpc_error(d.stub().Append, append_request("t", events(1)))]


def _storage_failure(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    """An index entry planted where the next append of a stream goes (the
    layout of lmdb_store.py): the write transaction finds a key that should
    not exist yet and refuses to overwrite it."""
    d = factory()
    append(d.stub(), "s", events(2))
    d.stop()
    env = lmdb.open(str(d.data_dir / "lmdb"), create=False, max_dbs=8)
    try:
        streams, idx = env.open_db(b"streams", create=False), env.open_db(b"stream_idx")
        with env.begin(write=True) as txn:
            state = txn.get(b"s", db=streams)
            assert state is not None
            sid, next_revision, _ = struct.unpack(">QQQ", state)
            txn.put(struct.pack(">QQ", sid, next_revision), struct.pack(">Q", 1), db=idx)
    finally:
        env.close()
    d.start()
    return [rpc_error(d.stub().Append, append_request("s", events(1)))]


def _with_tokens(factory: DaemonFactory) -> tuple[DaemonProcess, str]:
    """A daemon with a tokens file: principal ``p`` may append to ``p-`` streams."""
    token, digest = access.new_token()
    d = factory(start=False)
    tokens = d.data_dir.parent / f"{d.data_dir.name}-tokens.toml"
    tokens.write_text(f'[principals.p]\ntoken_sha256 = "{digest}"\n'
                      'grants = [{ prefix = "p-", roles = ["read", "append"] }]\n')  # fmt: skip
    d.extra_args += ["--tokens-file", str(tokens)]
    return d.start(), token


def _unauthenticated(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d, _ = _with_tokens(factory)
    stub = d.stub()
    return [
        rpc_error(stub.Append, append_request("p-1", events(1))),
        rpc_error(lambda r: stub.Append(r, metadata=(("authorization", "Bearer x"),)),
                  append_request("p-1", events(1))),
    ]  # fmt: skip


def _permission_denied(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d, token = _with_tokens(factory)
    stub, md = d.stub(), (("authorization", f"Bearer {token}"),)
    return [rpc_error(lambda r: stub.Append(r, metadata=md),
                      append_request("q-1", events(1)))]  # fmt: skip


def _resource_cap(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d = factory(extra_args=["--max-streams-per-client", "1"])
    stub = d.stub()
    held = stub.Subscribe(iter([pb.SubscribeRequest(options=pb.SubscribeOptions())]))
    next(held)  # confirmed: the one streaming call this client may have
    try:
        return [rpc_error(stub.Read, pb.ReadRequest(stream="$all"))]
    finally:
        held.cancel()


def _rate_limited(factory: DaemonFactory, plain: DaemonProcess) -> list[grpc.RpcError]:
    d = factory(extra_args=["--rate-events", "10"])
    stub = d.stub()
    append(stub, "s", events(10))
    return [rpc_error(stub.Append, append_request("s", events(5)))]


Provoke = Callable[[DaemonFactory, DaemonProcess], list[grpc.RpcError]]
PROVOKE: dict[str, Provoke] = {
    "INVALID_ARGUMENT": _invalid,
    "WRONG_EXPECTED_REVISION": _wrong_revision,
    "EVENT_ID_CONFLICT": _id_conflict,
    "STREAM_NOT_FOUND": _stream_not_found,
    "EVENT_NOT_FOUND": _event_not_found,
    "OVERLOADED": _queue_full,
    "STORAGE_FULL": _map_full,
    "SHUTTING_DOWN": _shutting_down,
    "CORRUPTION": _corruption,
    "DEGRADED": _degraded,
    "STORAGE_FAILURE": _storage_failure,
    "UNAUTHENTICATED": _unauthenticated,
    "PERMISSION_DENIED": _permission_denied,
    "RESOURCE_CAP": _resource_cap,
    "RATE_LIMITED": _rate_limited,
}
MAPPING_ONLY = {"INTERNAL"}  # see the module docstring


@pytest.fixture(scope="module")
def plain(module_daemon_factory: DaemonFactory) -> DaemonProcess:
    """One daemon with the defaults, for the rows that need nothing special."""
    return module_daemon_factory()


def test_the_table_has_every_row() -> None:
    reasons = [row.reason for row in ROWS]
    assert len(reasons) == len(set(reasons)), reasons
    assert set(reasons) == PROVOKE.keys() | MAPPING_ONLY


@pytest.mark.parametrize("row", [r for r in ROWS if r.reason in PROVOKE], ids=lambda r: r.reason)
def test_every_row_end_to_end(
    row: Row, daemon_factory: DaemonFactory, plain: DaemonProcess
) -> None:
    answers = PROVOKE[row.reason](daemon_factory, plain)
    assert answers
    for err in answers:
        assert_row(row, err)


# -- the mapping ------------------------------------------------------------

# One instance of each domain error a client can get, as the daemon raises it.
DOMAIN_ERRORS: list[errors.StoreError] = [
    errors.InvalidArgument("stream: must not be empty"),
    errors.WrongExpectedRevision("s", "5", "1"),
    errors.EventIdConflict("event id reused", stream="s"),
    errors.StreamNotFound("s"),
    errors.EventNotFound("0f8fad5b-d9cb-469f-a165-70867728950e"),
    errors.Overloaded("too many appends queued", retry_after_ms=50),
    errors.RateLimited("over 100 appended events/s", retry_after_ms=120),
    errors.ResourceCap("20 streaming calls on this connection", retry_after_ms=1000),
    errors.Unauthenticated("no bearer token in the authorization metadata"),
    errors.PermissionDenied("principal 'billing' may not append to 'orders-1'"),
    errors.StorageFull("the data volume is full"),
    errors.SpacePressure("the data volume is 96% used"),
    errors.MapFull("the LMDB map is at --max-map-size"),
    errors.ShuttingDown("the store is shutting down"),
    errors.Corruption("checksum mismatch", 2),
    errors.Degraded("the store is read-only", retry_after_ms=5000, position="2"),
    errors.StorageFailure("storage write failed"),
    errors.Internal("internal error (incident 0123456789ab)"),
]


class _Answer(grpc.RpcError):  # type: ignore[misc]
    """A status as the daemon's mapping makes it, read as a client would."""

    def __init__(self, error: errors.StoreError) -> None:
        self._code, self._message, self._trailers = status.to_status(error)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def _classes(cls: type[errors.StoreError]) -> set[type[errors.StoreError]]:
    return {cls}.union(*(_classes(sub) for sub in cls.__subclasses__()))


def test_every_domain_error_has_a_row() -> None:
    never_answered = {errors.StoreError, errors.DataDirLocked, errors.StoreDamaged}
    answered = _classes(errors.StoreError) - never_answered
    assert {type(e) for e in DOMAIN_ERRORS} == answered
    assert {row.reason for row in ROWS} == {e.reason for e in DOMAIN_ERRORS}


@pytest.mark.parametrize("error", DOMAIN_ERRORS, ids=lambda e: e.reason)
def test_every_row_is_the_mapping_of_its_domain_error(error: errors.StoreError) -> None:
    (row,) = [r for r in ROWS if r.reason == error.reason]
    assert_row(row, _Answer(error))
