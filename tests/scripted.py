"""Scripted servers: in-process test doubles of the daemon, with pytest-grpc.

The client's retry, deadline, breaker and error-mapping logic is tested
against a :class:`ScriptedStore`: a servicer of the daemon's service whose
every RPC answers from a script the test sets (``UNAVAILABLE`` three times
then OK; a daemon error with its exact trailers; a reply lost after a commit;
a hang past the deadline; a read cut after its first page) and which records
every request it got, when, and with how much deadline left. It is a pure
test double of the server ("fakes only for pure logic"): what the client does
with the daemon's answers; the tests against a real daemon stay.

pytest-grpc 0.8.0 (2020) with grpcio 1.85 and pytest 9:

* Works, and is used: its real-server mode. The ``grpc_server`` fixture runs a
  sync ``grpc.server`` on a thread pool in this process, built from the
  module-scoped ``grpc_add_to_server``, ``grpc_servicer`` and
  ``grpc_stub_cls`` defined here; ``grpc_channel`` / ``grpc_stub`` give a
  sync stub to it. The client under test opens its own ``grpc.aio`` channel to
  ``grpc_addr``. A test module sets ``grpc_max_workers`` (the plugin reads it):
  its default of one worker serves one RPC at a time.
* Replaced: ``grpc_addr``. The plugin's binds a probe socket to ``localhost``,
  never closes it (a ResourceWarning pytest reports as an unraisable
  exception) and lets the server bind ``localhost``, which may mean both
  loopback families, with SO_REUSEPORT on (gRPC's default), so another
  server could be handed the same port once the probe is gone. Ours picks a
  port on 127.0.0.1 with a probe socket that also sets SO_REUSEPORT and
  stays bound, so no other socket gets that port, until the module is done.
* Broken, not used: its fake mode (``--grpc-fake-server``). Its ``FakeServer``
  lacks ``add_registered_method_handlers``, which the code grpcio-tools
  generates now calls (AttributeError at setup), and its fake channel stands
  in for a sync channel only, while the client is ``grpc.aio``.

This module is a pytest plugin (``pytest_plugins`` in conftest.py), so its
fixtures are there for every test module; only the modules that ask for
``store`` start a server.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store import errors as server_errors
from lighthouse_store import status as server_status

# A step answers one call: (request, context) -> response (for Read: an
# iterable of pages). It may abort the call instead (context.abort raises).
Step = Callable[[Any, grpc.ServicerContext], Any]


@dataclass(frozen=True)
class Call:
    request: Any
    at: float  # time.monotonic() when it arrived
    time_remaining: float | None  # seconds of the client's deadline left then


class ScriptedStore(pb_grpc.EventStoreServiceServicer):
    """The daemon's service, answering each method from a list of steps: the
    n-th call after ``on()`` gets step n, and the last step every call after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._steps: dict[str, tuple[int, Sequence[Step]]] = {}  # from which call
            self.calls: dict[str, list[Call]] = {}

    def on(self, method: str, *steps: Step) -> None:
        if not steps:
            raise ValueError("a script needs at least one step")
        with self._lock:
            self._steps[method] = (len(self.calls.get(method, [])), steps)

    def requests(self, method: str) -> list[Any]:
        with self._lock:
            return [c.request for c in self.calls.get(method, [])]

    def _next(self, method: str, request: Any, context: grpc.ServicerContext) -> Step:
        with self._lock:
            calls = self.calls.setdefault(method, [])
            calls.append(Call(request, time.monotonic(), context.time_remaining()))
            script = self._steps.get(method)
        if script is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not scripted")
            raise AssertionError("unreachable: abort raises")
        first, steps = script
        return steps[min(len(calls) - first, len(steps)) - 1]

    def Append(self, request: pb.AppendRequest, context: grpc.ServicerContext) -> Any:
        return self._next("Append", request, context)(request, context)

    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._next("Read", request, context)(request, context)

    def GetEvent(self, request: pb.GetEventRequest, context: grpc.ServicerContext) -> Any:
        return self._next("GetEvent", request, context)(request, context)

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> Any:
        return self._next("GetInfo", request, context)(request, context)


# -- steps ---------------------------------------------------------------


def reply(response: message.Message) -> Step:
    return lambda request, context: response


def fail(
    code: grpc.StatusCode,
    message: str = "scripted failure",
    trailers: Sequence[tuple[str, bytes]] = (),
) -> Step:
    def step(request: Any, context: grpc.ServicerContext) -> Any:
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        context.abort(code, message)

    return step


def unavailable(message: str = "scripted: the daemon is down") -> Step:
    return fail(grpc.StatusCode.UNAVAILABLE, message)


def daemon_error(error: server_errors.StoreError) -> Step:
    """Fail exactly as the daemon fails with ``error``: its own status mapping
    (lighthouse_store.status.to_status) builds the code, message and trailers."""
    code, message, trailers = server_status.to_status(error)
    return fail(code, message, trailers)


def hang(request: Any, context: grpc.ServicerContext) -> Any:
    """Never answer: wait until the client's deadline ends the call."""
    done = threading.Event()
    if context.add_callback(done.set):
        done.wait(60)
    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "scripted: answered too late")


def then(first: Step, second: Step) -> Step:
    """Do ``first`` (e.g. commit an append), throw its answer away, then ``second``."""

    def step(request: Any, context: grpc.ServicerContext) -> Any:
        first(request, context)
        return second(request, context)

    return step


def cut_after(pages: int, reads: Step) -> Step:
    """Send the first ``pages`` pages of ``reads``' answer, then break the
    stream with UNAVAILABLE (a daemon restart in the middle of a read)."""

    def step(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        answer: Iterable[Any] = reads(request, context)
        for n, page in enumerate(answer):
            if n == pages:
                break
            yield page
        context.abort(grpc.StatusCode.UNAVAILABLE, "scripted: the stream broke")

    return step


class MemoryLog:
    """Just enough of the store for scripted appends and reads: appends are
    idempotent by event ids (a retry gets the original result), reads follow
    ReadRequest's start, direction and max_count, in pages of ``page_size``."""

    def __init__(self, page_size: int = 2) -> None:
        self.page_size = page_size
        self.events: list[pb.RecordedEvent] = []
        self._appended: dict[tuple[str, ...], pb.AppendResponse] = {}
        self._lock = threading.Lock()

    def append(self, request: pb.AppendRequest, context: Any = None) -> Any:
        ids = tuple(e.event_id for e in request.events)
        with self._lock:
            if ids in self._appended:
                return self._appended[ids]
            revision = sum(1 for e in self.events if e.stream == request.stream)
            for e in request.events:
                self.events.append(
                    pb.RecordedEvent(
                        event_id=e.event_id,
                        event_type=e.event_type,
                        data=e.data,
                        content_type=e.content_type,
                        stream=request.stream,
                        revision=revision,
                        position=len(self.events) + 1,
                    )
                )
                revision += 1
            last = self.events[-1]
            response = pb.AppendResponse(
                first_position=last.position - len(ids) + 1,
                last_position=last.position,
                last_revision=last.revision,
            )
            self._appended[ids] = response
            return response

    def read(self, request: pb.ReadRequest, context: Any = None) -> Iterator[Any]:
        everything = request.stream in ("", "$all")
        key = "position" if everything else "revision"
        with self._lock:
            found = [e for e in self.events if everything or e.stream == request.stream]
        backwards = request.direction == pb.DIRECTION_BACKWARDS
        if backwards:
            found.reverse()
        start_field = request.WhichOneof("start")
        if start_field is not None:
            start = getattr(request, start_field)
            found = [
                e
                for e in found
                if (getattr(e, key) <= start if backwards else getattr(e, key) >= start)
            ]
        if request.max_count:
            found = found[: request.max_count]
        for i in range(0, len(found), self.page_size):
            yield pb.ReadResponse(events=found[i : i + self.page_size])


# -- pytest-grpc's fixtures ----------------------------------------------


@pytest.fixture(scope="module")
def grpc_addr() -> Iterator[str]:
    """Overrides pytest-grpc's (see the module docstring): 127.0.0.1 only."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{probe.getsockname()[1]}"
    finally:
        probe.close()


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[[Any, grpc.Server], None]:
    return pb_grpc.add_EventStoreServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer() -> ScriptedStore:
    return ScriptedStore()


@pytest.fixture(scope="module")
def grpc_stub_cls() -> Any:
    return pb_grpc.EventStoreServiceStub


@pytest.fixture
def store(grpc_servicer: ScriptedStore, grpc_server: grpc.Server) -> ScriptedStore:
    """The module's scripted server, running, with a clean script."""
    grpc_servicer.reset()
    return grpc_servicer
