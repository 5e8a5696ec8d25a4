"""The empty-RPC floor: a grpc.aio server whose one method returns its request.

    python perf/echo_server.py [--listen 127.0.0.1:0]

It runs in its own process, like the daemon, and prints the same ready line on
stdout once it accepts connections::

    {"event": "ready", "address": "127.0.0.1:41234", "pid": 12345}

The method is ``/lighthouse.perf.v1.Echo/Echo``, unary, with raw bytes in and
out (no protobuf), so a round trip costs only what gRPC itself costs. The
server is set up as the daemon's is (``grpc.aio.server`` with the daemon's own
options, taken from ``lighthouse_store.server``; generic and registered method
handlers; one insecure port); SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc

from lighthouse_store.testing import DaemonProcess

SERVICE = "lighthouse.perf.v1.Echo"
METHOD = f"/{SERVICE}/Echo"


def server_options() -> list[tuple[str, Any]]:
    """The daemon's own grpc.aio server options, so that both servers are set up alike."""
    try:
        from lighthouse_store.config import Config
        from lighthouse_store.server import _server_options

        return list(_server_options(Config()))
    except (ImportError, AttributeError) as exc:  # the daemon moved them: a copy
        print(f"echo_server: daemon server options not found ({exc!r})", file=sys.stderr)
        return [
            ("grpc.max_receive_message_length", 20 * 1024 * 1024),
            ("grpc.max_send_message_length", 20 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=server_options())
    # Registered the way the daemon registers its service (server.py).
    handlers = {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"echo_server: cannot listen on {listen}")
    await server.start()
    host = listen.rsplit(":", 1)[0]
    ready = {"event": "ready", "address": f"{host}:{port}", "pid": os.getpid()}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


class EchoServer(DaemonProcess):
    """The echo server as a subprocess, started (ready line), stopped and
    killed by PID exactly as the daemon is: only its command differs."""

    def __init__(self, script: Path, log_path: Path) -> None:
        super().__init__(log_path.parent, log_path=log_path)
        self.script = script

    def command(self) -> list[str]:
        return [sys.executable, str(self.script), "--listen", f"127.0.0.1:{self.port}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (default 127.0.0.1:0)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
