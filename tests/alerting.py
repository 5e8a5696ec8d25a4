"""Test helpers for the alerting configuration in ``deploy/``.

- :func:`tool`: the path of a Prometheus tool from Debian's ``prometheus`` and
  ``prometheus-alertmanager`` packages, or a skip that says how to install them
  (a failure in CI, where ``./dev test`` runs as root and installs them).
- :func:`rules_overlay`: the alert rules with every ``for:`` shortened, so that
  a test Prometheus that scrapes and evaluates every second fires within
  seconds; nothing else changes.
- :func:`alertmanager_overlay`: the example Alertmanager configuration with its
  PagerDuty and Slack integrations pointed at a :class:`Receiver` in the test
  (their ``url`` and ``api_url`` settings) and its waits shortened.
- :func:`prometheus_overlay`: the example Prometheus configuration scraping one
  daemon every second, evaluating every second, alerting to one Alertmanager.
- :func:`alertmanager`, :func:`prometheus`: the real programs on free loopback
  ports, stopped by their pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

_PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    # Debian's name for the alertmanager binary, then upstream's.
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
}


def tool(*names: str) -> str:
    """The first of ``names`` on PATH; else skip the test (fail it in CI)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    packages = " ".join(sorted({_PACKAGES[n] for n in names}))
    message = (
        f"{' or '.join(names)} not found: install Debian's {packages} "
        f"(apt-get install --no-install-recommends {packages}), which ./dev test "
        "does by itself when it runs as root"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dump_yaml(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    return path


def rules_overlay(for_: str = "1s", rules: Path = RULES) -> dict[str, Any]:
    """The rules of ``rules`` with every ``for:`` set to ``for_``."""
    data: dict[str, Any] = load_yaml(rules)
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    return data


def alertmanager_overlay(receiver_url: str, wait: str = "1s") -> dict[str, Any]:
    """The example Alertmanager configuration, notifying ``receiver_url``
    (``/pagerduty`` and ``/slack`` under it) instead of PagerDuty and Slack,
    with every group_wait and group_interval set to ``wait``."""
    data: dict[str, Any] = load_yaml(ALERTMANAGER_CONFIG)
    for receiver in data["receivers"]:
        for pd in receiver.get("pagerduty_configs", []):
            pd.pop("routing_key_file", None)
            pd["routing_key"] = "test-routing-key"
            pd["url"] = f"{receiver_url}/pagerduty"
        for slack in receiver.get("slack_configs", []):
            slack.pop("api_url_file", None)
            slack["api_url"] = f"{receiver_url}/slack"
    routes = [data["route"]]
    while routes:
        route = routes.pop()
        route["group_wait"] = route["group_interval"] = wait
        routes += route.get("routes", [])
    return data


class Receiver:
    """An HTTP server on loopback that records every JSON body POSTed to it,
    as (path, body) in arrival order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._changed:
                    receiver.received.append((self.path, body))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, found: Callable[[str, Any], bool], timeout: float = 60.0) -> Any:
        """The first body (in arrival order) for which ``found(path, body)``."""
        with self._changed:
            ok = self._changed.wait_for(lambda: any(found(p, b) for p, b in self.received), timeout)
            assert ok, f"nothing matching arrived in {timeout} s; got {self.received}"
            return next(b for p, b in self.received if found(p, b))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def prometheus_overlay(
    target: str, alertmanager: str, rules: Path, interval: str = "1s"
) -> dict[str, Any]:
    """The example Prometheus configuration with its job ``lighthouse``
    scraping ``target`` (host:port) and alerting to ``alertmanager``
    (host:port), loading ``rules``, scraping and evaluating every
    ``interval``."""
    data: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    data["global"] = {
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    data["rule_files"] = [str(rules)]
    (am,) = data["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [alertmanager]}]
    (job,) = data["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return data


@contextlib.contextmanager
def _serving(name: str, argv: list[str], workdir: Path, timeout: float) -> Iterator[str]:
    """Run ``argv`` (which listens on ``{port}``, a free loopback port) with
    its output in ``workdir/<name>.log``; yield its base URL once ``/-/ready``
    answers; stop it by its pid on exit."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [a.replace("{port}", str(port)) for a in argv], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{name} exited: {log_path.read_text()[-2000:]}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            assert time.monotonic() < deadline, f"{name} did not get ready: {log_path}"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def alertmanager(
    config: Path, workdir: Path, timeout: float = 60.0
) -> contextlib.AbstractContextManager[str]:
    """A real Alertmanager with ``config`` (no clustering) on a free loopback
    port, stopped by its pid on exit; yields its base URL once it is ready."""
    binary = tool("prometheus-alertmanager", "alertmanager")
    argv = [binary, f"--config.file={config}", f"--storage.path={workdir / 'am-data'}",
            "--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
            "--log.level=warn"]  # fmt: skip
    return _serving("alertmanager", argv, workdir, timeout)


def prometheus(
    config: Path, workdir: Path, timeout: float = 60.0
) -> contextlib.AbstractContextManager[str]:
    """A real Prometheus with ``config`` and its own storage under
    ``workdir``, on a free loopback port, stopped by its pid on exit; yields
    its base URL once it is ready."""
    binary = tool("prometheus")
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prom-data'}",
            "--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    return _serving("prometheus", argv, workdir, timeout)


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """The result of an instant query (a vector: one entry per series)."""
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    answer = http_json(url)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result
