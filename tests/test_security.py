"""Who may do what, end to end: TLS and mTLS, bearer tokens, roles per stream
prefix, the audit line, and the refusal to serve in the open
(``access.py``, ``transport.py``). Real daemons, real certificates (made here
with trustme), a real tokens file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from support import DaemonFactory, grpcurl_path

from lighthouse_client import (
    NewEvent,
    PermissionDenied,
    StoreClient,
    Tls,
    Unauthenticated,
)
from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store import access
from lighthouse_store.settings import ConfigError
from lighthouse_store.testing import DaemonProcess

TOKENS = {name: access.new_token() for name in ("billing", "orders", "admin", "reader")}


def _tokens_file(path: Path) -> Path:
    lines = []
    grants = {
        "billing": '[{ prefix = "billing-", roles = ["read", "append", "consume:billing"] }]',
        "orders": '[{ prefix = "orders-", roles = ["read", "append"] },'
        ' { prefix = "billing-", roles = ["read"] }]',
        "admin": '[{ prefix = "", roles = ["admin"] }]',
        "reader": '[{ prefix = "", roles = ["read"] }]',
    }
    for name, (_, digest) in TOKENS.items():
        lines += [f"[principals.{name}]", f'token_sha256 = "{digest}"', f"grants = {grants[name]}"]
    lines += [
        "[principals.certified]",
        'common_names = ["certified.client"]',
        'grants = [{ prefix = "cert-", roles = ["read", "append"] }]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _md(name: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[name][0]}"),) if name else ()


def _event() -> pb.ProposedEvent:
    return pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="T", data=b"{}")


def _append(stub: Any, stream: str, who: str | None) -> Any:
    return stub.Append(
        pb.AppendRequest(stream=stream, events=[_event()]), timeout=30, metadata=_md(who)
    )


def _code(fn: Callable[[], Any]) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("secured")
    d = DaemonProcess(
        base / "data", extra_args=["--tokens-file", str(_tokens_file(base / "t.toml"))]
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def stub(secured: DaemonProcess) -> Any:
    return pb_grpc.EventStoreServiceStub(grpc.insecure_channel(secured.address))


def test_no_token_or_a_wrong_one_is_unauthenticated(stub: Any) -> None:
    assert _code(lambda: _append(stub, "billing-1", None)) == grpc.StatusCode.UNAUTHENTICATED
    garbage = (("authorization", "Bearer garbage"),)
    for call in (
        lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=30, metadata=garbage),
        lambda: list(stub.Read(pb.ReadRequest(stream="billing-1"), timeout=30, metadata=garbage)),
        lambda: stub.GetInfo(
            pb.GetInfoRequest(), timeout=30, metadata=(("authorization", "Basic dXNlcjpwdw=="),)
        ),
    ):
        assert _code(call) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        _code(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=30, metadata=_md("orders")))
        == grpc.StatusCode.OK
    )


def test_a_principal_appends_and_reads_only_under_its_prefixes(stub: Any) -> None:
    assert _code(lambda: _append(stub, "billing-1", "billing")) == grpc.StatusCode.OK
    # The forged event of the issue: another service's stream.
    assert _code(lambda: _append(stub, "billing-1", "orders")) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: _append(stub, "orders-1", "billing")) == grpc.StatusCode.PERMISSION_DENIED
    read = pb.ReadRequest(stream="billing-1")
    assert (
        _code(lambda: list(stub.Read(read, timeout=30, metadata=_md("orders"))))
        == grpc.StatusCode.OK
    )  # orders may read billing-
    assert (
        _code(
            lambda: list(
                stub.Read(pb.ReadRequest(stream="orders-1"), timeout=30, metadata=_md("billing"))
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    # Nothing of the refused append was written.
    events = [
        e for page in stub.Read(read, timeout=30, metadata=_md("billing")) for e in page.events
    ]
    assert len(events) == 1


def test_all_needs_read_on_everything_or_a_filter_within_ones_streams(stub: Any) -> None:
    everything = pb.ReadRequest(stream="$all")
    own = pb.ReadRequest(stream="$all", filter=pb.EventFilter(stream_prefixes=["billing-"]))
    wider = pb.ReadRequest(stream="$all", filter=pb.EventFilter(stream_prefixes=["b"]))
    assert (
        _code(lambda: list(stub.Read(everything, timeout=30, metadata=_md("billing"))))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        _code(lambda: list(stub.Read(own, timeout=30, metadata=_md("billing"))))
        == grpc.StatusCode.OK
    )
    assert (
        _code(lambda: list(stub.Read(wider, timeout=30, metadata=_md("billing"))))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        _code(lambda: list(stub.Read(everything, timeout=30, metadata=_md("reader"))))
        == grpc.StatusCode.OK
    )


def test_get_event_of_a_stream_one_may_not_read_is_not_found(stub: Any) -> None:
    ev = _event()
    stub.Append(
        pb.AppendRequest(stream="orders-9", events=[ev]), timeout=30, metadata=_md("orders")
    )
    get = pb.GetEventRequest(event_id=ev.event_id)
    assert stub.GetEvent(get, timeout=30, metadata=_md("orders")).event.stream == "orders-9"
    assert (
        _code(lambda: stub.GetEvent(get, timeout=30, metadata=_md("billing")))
        == grpc.StatusCode.NOT_FOUND
    )


def _subscribe(stub: Any, who: str, options: pb.SubscribeOptions) -> grpc.StatusCode:
    requests = iter([pb.SubscribeRequest(options=options)])
    call = stub.Subscribe(requests, timeout=5, metadata=_md(who))
    try:
        next(iter(call))  # the confirmation, or the refusal
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        call.cancel()
    return grpc.StatusCode.OK


def test_only_a_consume_role_may_move_a_consumers_checkpoint(stub: Any) -> None:
    """The issue's attack: another client moved the billing consumer's
    checkpoint to the head. A subscription as a named consumer (whose acks
    move its checkpoint) needs consume:<prefix> on the streams it reads."""
    billing_only = pb.EventFilter(stream_prefixes=["billing-"])
    as_billing = pb.SubscribeOptions(consumer="billing", filter=billing_only)
    as_billing.from_start.SetInParent()
    assert _subscribe(stub, "orders", as_billing) == grpc.StatusCode.PERMISSION_DENIED
    assert _subscribe(stub, "billing", as_billing) == grpc.StatusCode.OK
    other = pb.SubscribeOptions(consumer="ledger", filter=billing_only)
    assert _subscribe(stub, "billing", other) == grpc.StatusCode.PERMISSION_DENIED
    plain = pb.SubscribeOptions(filter=billing_only)
    assert _subscribe(stub, "orders", plain) == grpc.StatusCode.OK  # reading is allowed


def test_system_streams_and_the_admin_service_are_for_admins(
    stub: Any, secured: DaemonProcess
) -> None:
    """``$system`` is written by the store itself, and by admins through the
    admin service; no one appends to it, and reading it needs read on it."""
    assert _code(lambda: _append(stub, "$system", "admin")) == grpc.StatusCode.INVALID_ARGUMENT
    system = pb.ReadRequest(stream="$system")
    assert (
        _code(lambda: list(stub.Read(system, timeout=30, metadata=_md("billing"))))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    admin = pb_grpc.AdminServiceStub(grpc.insecure_channel(secured.address))
    status = pb.GetStatusRequest()
    assert _code(lambda: admin.GetStatus(status, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        _code(lambda: admin.GetStatus(status, timeout=30, metadata=_md("billing")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        _code(lambda: admin.GetStatus(status, timeout=30, metadata=_md("admin")))
        == grpc.StatusCode.OK
    )
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "lighthouse_store",
            "admin",
            "status",
            "--address",
            secured.address,
            "--token",
            TOKENS["admin"][0],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["level"] == "normal"
    degrade = pb.DegradeRequest(reason="test", level="warning")
    admin.Degrade(degrade, timeout=60, metadata=_md("admin"))
    admin.Recover(pb.RecoverRequest(reason="test"), timeout=60, metadata=_md("admin"))
    written = [
        e.event_type
        for page in stub.Read(system, timeout=30, metadata=_md("reader"))
        for e in page.events
    ]
    assert "DegradationRecovery" in written


def test_refusals_are_audited_once_a_minute_and_never_with_the_token(
    stub: Any, secured: DaemonProcess
) -> None:
    for _ in range(5):
        _code(lambda: _append(stub, "orders-audit", "reader"))
        _code(
            lambda: stub.GetInfo(
                pb.GetInfoRequest(),
                timeout=30,
                metadata=(("authorization", "Bearer leaked-secret"),),
            )
        )
    time.sleep(0.5)
    lines = [json.loads(line) for line in secured.log_text().splitlines() if line.startswith("{")]
    audits = [
        line
        for line in lines
        if line.get("audit") == "permission_denied" and line.get("stream") == "orders-audit"
    ]
    assert len(audits) == 1, audits
    assert audits[0]["principal"] == "reader" and audits[0]["rpc"] == "Append"
    text = secured.log_text()
    assert "leaked-secret" not in text
    assert all(token not in text for token, _ in TOKENS.values())


def test_the_client_sends_its_token_a_string_or_a_callable(secured: DaemonProcess) -> None:
    calls = []

    def current() -> str:
        calls.append(1)
        return TOKENS["billing"][0]

    for token in (TOKENS["billing"][0], current):
        with StoreClient(secured.address, token=token) as client:
            result = client.append("billing-client", NewEvent("T", b"{}"))
            assert result.last_position > 0
            assert client.read_stream("billing-client")
            with pytest.raises(PermissionDenied):
                client.append("orders-client", NewEvent("T", b"{}"))
            assert TOKENS["billing"][0] not in repr(client)
    assert calls
    with StoreClient(secured.address) as anonymous, pytest.raises(Unauthenticated):
        anonymous.append("billing-client", NewEvent("T", b"{}"))


def test_workers_each_enforce_the_tokens_file(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory(
        workers=2, extra_args=["--tokens-file", str(_tokens_file(tmp_path / "t.toml"))]
    )
    for _ in range(6):  # new connections: the kernel spreads them over the workers
        with grpc.insecure_channel(
            d.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            s = pb_grpc.EventStoreServiceStub(ch)
            denied = _code(lambda s=s: _append(s, "billing-w", "orders"))  # type: ignore[misc]
            allowed = _code(lambda s=s: _append(s, "billing-w", "billing"))  # type: ignore[misc]
            assert (denied, allowed) == (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.OK)


# -- TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _server_files(ca: trustme.CA, where: Path, name: str = "server") -> list[str]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = where / f"{name}.pem", where / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    return ["--tls-cert", str(cert_path), "--tls-key", str(key_path)]


def _ca_file(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def _tls_stub(d: DaemonProcess, creds: grpc.ChannelCredentials) -> Any:
    ch = grpc.secure_channel(d.address, creds, options=[("grpc.use_local_subchannel_pool", 1)])
    return pb_grpc.EventStoreServiceStub(ch), ch


def test_tls_serves_and_plaintext_does_not_connect(
    ca: trustme.CA, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory(extra_args=_server_files(ca, tmp_path))
    stub, ch = _tls_stub(d, grpc.ssl_channel_credentials(ca.cert_pem.bytes()))
    assert _code(lambda: _append(stub, "tls-1", None)) == grpc.StatusCode.OK
    ch.close()
    with grpc.insecure_channel(d.address) as plain:
        code = _code(lambda: _append(pb_grpc.EventStoreServiceStub(plain), "tls-1", None))
    assert code == grpc.StatusCode.UNAVAILABLE
    other_ca = trustme.CA()
    stub, ch = _tls_stub(d, grpc.ssl_channel_credentials(other_ca.cert_pem.bytes()))
    assert _code(lambda: _append(stub, "tls-1", None)) == grpc.StatusCode.UNAVAILABLE
    ch.close()
    ca_path = _ca_file(ca, tmp_path / "ca.pem")
    for client in (
        StoreClient(d.address, tls=Tls(ca=ca_path)),
        StoreClient(d.address, tls=Tls(ca=ca.cert_pem.bytes())),
    ):
        with client:
            assert client.append("tls-client", NewEvent("T", b"{}")).last_position > 0
            assert client.info().head_position > 0


def test_mtls_requires_a_client_certificate_whose_cn_can_name_a_principal(
    ca: trustme.CA, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    client_ca = trustme.CA()
    d = daemon_factory(
        extra_args=[
            *_server_files(ca, tmp_path),
            "--tls-client-ca",
            str(_ca_file(client_ca, tmp_path / "cca.pem")),
            "--tokens-file",
            str(_tokens_file(tmp_path / "t.toml")),
        ]
    )
    without = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    stub, ch = _tls_stub(d, without)
    assert _code(lambda: _append(stub, "cert-1", None)) == grpc.StatusCode.UNAVAILABLE
    ch.close()
    cert = client_ca.issue_cert("certified.client", common_name="certified.client")
    key_pem, cert_pem = cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes()
    stub, ch = _tls_stub(d, grpc.ssl_channel_credentials(ca.cert_pem.bytes(), key_pem, cert_pem))
    assert _code(lambda: _append(stub, "cert-1", None)) == grpc.StatusCode.OK  # the CN's principal
    assert _code(lambda: _append(stub, "billing-1", None)) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        _code(lambda: _append(stub, "billing-1", "billing")) == grpc.StatusCode.OK
    )  # a token wins
    ch.close()
    with StoreClient(d.address, tls=Tls(ca=ca.cert_pem.bytes(), cert=cert_pem, key=key_pem)) as c:
        assert c.append("cert-2", NewEvent("T", b"{}")).last_position > 0


def test_sighup_reloads_the_certificate_without_dropping_connections(
    ca: trustme.CA, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory(extra_args=_server_files(ca, tmp_path))
    stub, kept = _tls_stub(d, grpc.ssl_channel_credentials(ca.cert_pem.bytes()))
    assert _code(lambda: _append(stub, "reload-1", None)) == grpc.StatusCode.OK
    new_ca = trustme.CA()
    _server_files(new_ca, tmp_path)  # the same paths, a certificate of another CA
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "TLS certificate reloaded" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "TLS certificate reloaded" in d.log_text()
    # The open connection goes on; new ones get the new certificate.
    assert _code(lambda: _append(stub, "reload-1", None)) == grpc.StatusCode.OK
    fresh, ch = _tls_stub(d, grpc.ssl_channel_credentials(new_ca.cert_pem.bytes()))
    assert _code(lambda: _append(fresh, "reload-1", None)) == grpc.StatusCode.OK
    ch.close()
    old, ch = _tls_stub(d, grpc.ssl_channel_credentials(ca.cert_pem.bytes()))
    assert _code(lambda: _append(old, "reload-1", None)) == grpc.StatusCode.UNAVAILABLE
    ch.close()
    kept.close()


# -- secure by default ----------------------------------------------------------


def _serve_exit(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lighthouse_store",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--http-listen",
            "off",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serving_off_loopback_without_tls_and_tokens_is_refused(tmp_path: Path) -> None:
    """The daemon exits before it binds: nothing listens on 0.0.0.0 here."""
    for listen in ("0.0.0.0:0", "[::]:0", "example.com:0"):
        done = _serve_exit(["--listen", listen], tmp_path)
        assert done.returncode == 2, done.stderr
        assert "not a loopback address" in done.stderr and "--insecure" in done.stderr
    assert not (tmp_path / "d").exists()  # refused before opening anything


def test_the_start_up_log_says_what_protects_the_port(daemon_factory: DaemonFactory) -> None:
    d = daemon_factory()
    assert (
        "security: no TLS; no authentication: every caller may do everything; loopback only"
        in d.log_text()
    )


def test_a_bad_tokens_file_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[principals.x]\ntoken_sha256 = "abc"\n')
    done = _serve_exit(["--listen", "127.0.0.1:0", "--tokens-file", str(bad)], tmp_path)
    assert done.returncode == 2 and "64 hex digits" in done.stderr
    with pytest.raises(ConfigError, match="unknown role"):
        access.parse(
            {
                "principals": {
                    "x": {"token_sha256": "0" * 64, "grants": [{"prefix": "", "roles": ["write"]}]}
                }
            },
            "t",
        )


def test_grpcurl_with_cacert_cert_key_and_a_token(
    ca: trustme.CA, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The README's grpcurl line for a daemon with mTLS and tokens (reflection
    needs no token)."""
    client_ca = trustme.CA()
    d = daemon_factory(
        extra_args=[
            *_server_files(ca, tmp_path),
            "--tls-client-ca", str(_ca_file(client_ca, tmp_path / "cca.pem")),
            "--tokens-file", str(_tokens_file(tmp_path / "t.toml")),
        ]
    )  # fmt: skip
    cert = client_ca.issue_cert("someone.else")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    argv = [
        str(grpcurl_path()), "-cacert", str(_ca_file(ca, tmp_path / "ca.pem")),
        "-cert", str(tmp_path / "client.pem"), "-key", str(tmp_path / "client.key"),
        "-H", f"authorization: Bearer {TOKENS['reader'][0]}", "-d", "{}",
        d.address, "lighthouse.store.v1.EventStoreService/GetInfo",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "server_version" in done.stdout
    no_token = [a for a in argv if not a.startswith("authorization")]
    no_token.remove("-H")
    done = subprocess.run(no_token, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Unauthenticated" in done.stderr


def _workers_reached(d: DaemonProcess, creds: grpc.ChannelCredentials, want: int) -> set[int]:
    """Worker pids reached over new TLS connections (the kernel spreads them)."""
    seen: set[int] = set()
    for _ in range(60):
        stub, ch = _tls_stub(d, creds)
        try:
            seen.add(stub.GetInfo(pb.GetInfoRequest(), timeout=30).worker_pid)
        finally:
            ch.close()
        if len(seen) == want:
            break
    return seen


def test_every_worker_serves_tls_and_reloads_on_sighup(
    ca: trustme.CA, daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    d = daemon_factory(workers=2, extra_args=_server_files(ca, tmp_path))
    assert len(_workers_reached(d, grpc.ssl_channel_credentials(ca.cert_pem.bytes()), 2)) == 2
    new_ca = trustme.CA()
    _server_files(new_ca, tmp_path)
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)  # the supervisor forwards it to every worker
    deadline = time.monotonic() + 30
    while d.log_text().count("TLS certificate reloaded") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.log_text().count("TLS certificate reloaded") == 2
    assert len(_workers_reached(d, grpc.ssl_channel_credentials(new_ca.cert_pem.bytes()), 2)) == 2
