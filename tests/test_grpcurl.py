"""grpcurl works through server reflection alone (no proto files)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid
from typing import Any

import pytest
from support import get_event, grpcurl_path, head

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess

SERVICE = "lighthouse.store.v1.EventStoreService"


def grpcurl(
    daemon: DaemonProcess, *args: str, data: Any = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(grpcurl_path()), "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [daemon.address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"grpcurl failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def json_messages(text: str) -> list[dict[str, Any]]:
    """grpcurl prints one JSON object per response message, back to back."""
    dec = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        obj, i = dec.raw_decode(text, i)
        out.append(norm(obj))


def norm(obj: Any) -> Any:
    """grpcurl prints proto field names (snake_case) or JSON names (camelCase),
    depending on its version: normalise to snake_case keys (not map keys)."""
    if isinstance(obj, list):
        return [norm(x) for x in obj]
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)
            out[snake] = v if snake == "metadata" else norm(v)
        return out
    return obj


@pytest.fixture(autouse=True)
def _have_grpcurl() -> None:
    assert grpcurl_path().exists(), f"grpcurl not installed at {grpcurl_path()}"


def test_list_services(daemon: DaemonProcess) -> None:
    services = ok(grpcurl(daemon, "list")).split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    methods = ok(grpcurl(daemon, "list", SERVICE)).split()
    for m in ("Append", "Read", "GetEvent", "GetInfo", "Subscribe"):
        assert f"{SERVICE}.{m}" in methods


def test_describe_service(daemon: DaemonProcess) -> None:
    out = ok(grpcurl(daemon, "describe", SERVICE))
    assert "service EventStoreService" in out
    assert "rpc Append ( .lighthouse.store.v1.AppendRequest )" in out
    assert "returns ( stream .lighthouse.store.v1.ReadResponse )" in out
    msg = ok(grpcurl(daemon, "describe", "lighthouse.store.v1.ProposedEvent"))
    assert "event_id" in msg and "metadata" in msg


def test_append_read_get_info_via_grpcurl(daemon: DaemonProcess) -> None:
    event_id = str(uuid.uuid4())
    payload = b'{"hello": "grpcurl"}'
    req = {
        "stream": "curl-1",
        "noStream": {},
        "events": [
            {
                "eventId": event_id,
                "eventType": "Greeted",
                "data": base64.b64encode(payload).decode(),
                "contentType": "application/json",
                "metadata": {"correlation_id": "c-42"},
            }
        ],
    }
    resp = json_messages(ok(grpcurl(daemon, f"{SERVICE}/Append", data=req)))
    assert len(resp) == 1
    # uint64 is a string in proto3 JSON; zero values are omitted.
    assert resp[0]["first_position"] == "1"
    assert resp[0]["last_position"] == "1"
    assert resp[0].get("last_revision", "0") == "0"

    # The same event through the Python stub.
    rec = get_event(daemon.stub(), event_id)
    assert (rec.stream, rec.data, rec.metadata["correlation_id"]) == ("curl-1", payload, "c-42")

    pages = json_messages(ok(grpcurl(daemon, f"{SERVICE}/Read", data={"stream": "curl-1"})))
    evs = [e for p in pages for e in p.get("events", [])]
    assert len(evs) == 1
    ev = evs[0]
    assert ev["event_id"] == event_id
    assert ev["event_type"] == "Greeted"
    assert base64.b64decode(ev["data"]) == payload
    assert ev["stream"] == "curl-1"
    assert ev["position"] == "1"
    assert ev["metadata"] == {"correlation_id": "c-42"}
    assert ev["recorded_at"].endswith("Z")

    got = json_messages(ok(grpcurl(daemon, f"{SERVICE}/GetEvent", data={"eventId": event_id})))
    assert got[0]["event"]["event_id"] == event_id

    info = json_messages(ok(grpcurl(daemon, f"{SERVICE}/GetInfo", data={})))[0]
    assert info["head_position"] == "1"
    assert info["durability"] == "DURABILITY_FSYNC"
    assert info["server_version"]
    assert info["limits"]["max_event_data_bytes"] == str(1 << 20)


def test_errors_via_grpcurl(daemon: DaemonProcess) -> None:
    ev = {"eventId": str(uuid.uuid4()), "eventType": "T", "data": ""}
    ok(grpcurl(daemon, f"{SERVICE}/Append", data={"stream": "s", "events": [ev]}))
    again = {"stream": "s", "noStream": {}, "events": [{**ev, "eventId": str(uuid.uuid4())}]}
    proc = grpcurl(daemon, f"{SERVICE}/Append", data=again)
    assert proc.returncode != 0
    assert "FailedPrecondition" in proc.stderr, proc.stderr
    bad = {"stream": "a/b", "events": [{**ev, "eventId": str(uuid.uuid4())}]}
    proc = grpcurl(daemon, f"{SERVICE}/Append", data=bad)
    assert proc.returncode != 0
    assert "InvalidArgument" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert head(daemon.stub()) == 1


def test_health_via_grpcurl(daemon: DaemonProcess) -> None:
    out = json_messages(ok(grpcurl(daemon, "grpc.health.v1.Health/Check", data={})))
    assert out[0]["status"] == "SERVING"


def test_read_all_backwards_via_grpcurl(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    for i in range(3):
        stub.Append(
            pb.AppendRequest(
                stream=f"s{i}",
                events=[pb.ProposedEvent(event_id=str(uuid.uuid4()), event_type="T")],
            ),
            timeout=30,
        )
    req = {"stream": "$all", "direction": "DIRECTION_BACKWARDS", "maxCount": "2"}
    pages = json_messages(ok(grpcurl(daemon, f"{SERVICE}/Read", data=req)))
    assert [e["position"] for p in pages for e in p.get("events", [])] == ["3", "2"]
