"""Helpers for the HTTP operations endpoint of a real daemon (imported as ``scrape``)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lighthouse_store.testing import DaemonProcess

T = TypeVar("T")

# Generous: only there so that a hung endpoint fails a test instead of hanging it.
HTTP_TIMEOUT = 30.0


def get(daemon: DaemonProcess, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type of ``GET path`` on the daemon's endpoint."""
    url = f"http://{daemon.http_address}{path}"
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def get_json(daemon: DaemonProcess, path: str) -> tuple[int, dict[str, Any]]:
    code, body, content_type = get(daemon, path)
    assert content_type == "application/json", (path, content_type)
    return code, json.loads(body)


def metrics_text(daemon: DaemonProcess) -> str:
    code, body, _ = get(daemon, "/metrics")
    assert code == 200
    return body.decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(daemon: DaemonProcess) -> Samples:
    """Every sample of a scrape, by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(metrics_text(daemon)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(what: str, probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30) -> T:
    """Call ``probe`` until ``ok`` holds for what it returns (a generous
    bound: only a hung daemon reaches it); the last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if ok(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {got!r} after {timeout} s")
        time.sleep(0.05)


def promtool() -> str:
    """The path of promtool, or skip saying how to get it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool is not installed: `./dev test` installs it as root, or run"
            " `apt-get install -y --no-install-recommends prometheus`"
        )
    return path
