"""The HTTP operations endpoint (``--http-listen``): ``/metrics`` and ``/health``.

A stdlib ``ThreadingHTTPServer`` on a thread of its own, a thread per
request: it never touches the event loop or the writer, so it answers while
either is busy or stuck. Routes:

- ``GET /metrics``: the Prometheus exposition of the registry (text format
  0.0.4, or OpenMetrics when the scraper asks for it);
- ``GET /health``: ``{status, level, checks}``, 200 or 503 (``health.py``);
- ``GET /health/detailed``: every component with its figures, the
  durability mode and the recent level changes;
- ``GET /health/{component}``: one of ``health.COMPONENTS``, 200 or 503; any
  other name is 404 with the list.

Each health request judges the figures of that moment (reading them costs
well under a millisecond: gauges in memory, or the workers' metric files).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from lighthouse_store.health import COMPONENTS, HealthMonitor
from lighthouse_store.ports import BindError

__all__ = ["OpsServer"]

log = logging.getLogger("lighthouse_store.http")

PATHS = ("/metrics", "/health", "/health/detailed", *(f"/health/{c}" for c in COMPONENTS))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    registry: CollectorRegistry
    monitor: HealthMonitor


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that sends nothing does not hold a thread for long
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path == "/health":
            report = self.server.monitor.report()
            self._json(report.http_status, report.summary())
        elif path == "/health/detailed":
            report = self.server.monitor.report()
            self._json(report.http_status, report.detailed())
        elif path.startswith("/health/"):
            name = path.removeprefix("/health/")
            if name not in COMPONENTS:
                self._json(404, {"error": f"unknown component {name!r}",
                                 "components": list(COMPONENTS)})  # fmt: skip
                return
            self._json(*self.server.monitor.report().component(name))
        else:
            self._json(404, {"error": "not found", "paths": list(PATHS)})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class OpsServer:
    """Bound at construction (raises BindError, as the gRPC port does);
    serves from :meth:`start` until :meth:`close`."""

    def __init__(self, listen: str, registry: CollectorRegistry, monitor: HealthMonitor) -> None:
        host, _, port = listen.rpartition(":")
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        cls = _V6Server if ":" in bare else _Server
        try:
            self._server = cls((bare, int(port)), _Handler)
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise BindError(f"cannot serve HTTP on {listen} ({why})") from None
        self._server.registry = registry
        self._server.monitor = monitor
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
            name="lh-http", daemon=True,
        )  # fmt: skip

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
