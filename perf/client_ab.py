#!/usr/bin/env python3
"""The client library's own cost, in-process: this tree's code against a base revision's.

    .venv/bin/python perf/client_ab.py                    # against main, about 1 minute
    .venv/bin/python perf/client_ab.py --base HEAD~1 --rounds 9

No daemon and no network: the clients talk to a stub that answers at once
(appends) or with pages parsed from bytes made here (reads), so what is timed
is the client library's side of a call and nothing else. The base revision's
``lighthouse_client`` is extracted (``git archive``) into a temp dir as the
package ``lighthouse_client_base`` and imported beside this tree's, so both run
in one process; each round runs every variant once, the order reversed every
other round, and the medians of the rounds are printed. Per variant:

* replay: ``AsyncStoreClient.read_all`` of ``--events`` 1 KiB events in pages of
  450 (the daemon's page for them), thread CPU per event; "stubs" counts the
  same pages' events without converting them, as the harness's stub clients do
  (bench.py, step 4). "replay + 1 field": then the position of every event is
  read (the stubs read it off the pages);
* append: ``AsyncStoreClient.append`` of one 1 KiB event on its event loop,
  thread CPU per call; "stubs" awaits the stub with a request built per call;
* subscribe: ``AsyncStoreClient.subscribe`` (window 1,000) taking ``--events`` // 2
  events that arrive in messages of 100 (as the harness's fan-out writer makes
  them), thread CPU per event; "stubs" counts the events of the same messages;
* sync subscribe: the same through ``StoreClient.subscribe``, wall time per
  event; "stubs" parses and counts the messages on this thread;
* sync append: ``StoreClient.append``, wall time per call, p50 (on the calling
  thread since ``_direct.py``; before, the hop to the client's event-loop thread
  and back included); "stubs" calls a synchronous stub that answers at once,
  with a request built per call.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import lighthouse_client
from lighthouse_proto.v1 import store_pb2 as pb

REPO = Path(__file__).resolve().parent.parent
PAGE_EVENTS = 450
SUBSCRIBE_BATCH = 100
DATA = os.urandom(1024)
APPENDED = pb.AppendResponse(first_position=1, last_position=1, last_revision=0)


def load_base(rev: str, into: Path) -> ModuleType:
    """``rev``'s client package, importable beside this one as ``lighthouse_client_base``."""
    archive = subprocess.run(
        ["git", "archive", rev, "clients/python/lighthouse_client"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "lighthouse_client_base"
    (into / "clients/python/lighthouse_client").rename(package)
    for f in package.glob("*.py"):
        f.write_text(re.sub(r"\blighthouse_client\b", "lighthouse_client_base", f.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module("lighthouse_client_base")


def page_bytes() -> bytes:
    events = [
        pb.RecordedEvent(
            event_id=str(uuid.uuid4()),
            event_type="BenchEvent",
            data=DATA,
            content_type="application/octet-stream",
            stream=f"bench-{n % 8}",
            revision=n,
            position=n + 1,
            checksum=n,
        )
        for n in range(PAGE_EVENTS)
    ]
    for e in events:
        e.recorded_at.seconds = 1_795_000_000
    return pb.ReadResponse(events=events).SerializeToString()


def subscription_messages(events: int) -> list[bytes]:
    """``events`` events from position 1 in ``SubscribeResponse`` messages of 100."""
    out = []
    for first in range(1, events + 1, SUBSCRIBE_BATCH):
        batch = pb.SubscribeResponse()
        for position in range(first, min(first + SUBSCRIBE_BATCH, events + 1)):
            e = batch.events.events.add(
                event_id=str(uuid.uuid4()),
                event_type="BenchEvent",
                data=DATA,
                content_type="application/octet-stream",
                stream=f"bench-{position % 8}",
                revision=position,
                position=position,
            )
            e.recorded_at.seconds = 1_795_000_000
        out.append(batch.SerializeToString())
    return out


class Stream:
    """A ``Subscribe`` call that answers at once with ``messages``, in turn."""

    def __init__(self, messages: list[bytes]) -> None:
        self._messages = iter(messages)

    async def write(self, request: Any) -> None:
        pass

    async def read(self) -> Any:
        return pb.SubscribeResponse.FromString(next(self._messages))

    def cancel(self) -> None:
        pass


class Stub:
    """Answers at once: Append with APPENDED, Read with ``pages`` pages parsed from
    ``raw``, Subscribe with ``messages``."""

    def __init__(self, raw: bytes, pages: int, messages: list[bytes]) -> None:
        self.raw, self.pages, self.messages = raw, pages, messages

    def Subscribe(self, metadata: Any = None) -> Stream:
        return Stream(self.messages)

    async def Append(self, request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
        return APPENDED

    def Read(
        self, request: Any, timeout: float | None = None, metadata: Any = None
    ) -> AsyncIterator[Any]:
        async def pages() -> AsyncIterator[Any]:
            for _ in range(self.pages):
                yield pb.ReadResponse.FromString(self.raw)

        return pages()


class Variant:
    """One client library (or the stubs alone), its clients bound to a :class:`Stub`."""

    def __init__(self, package: ModuleType | None, stub: Stub, events: int, calls: int) -> None:
        self.stub, self.events, self.calls = stub, events, calls
        self.new_event = (package or lighthouse_client).NewEvent
        self.sync: Any = None
        if package is not None:
            self.sync = package.StoreClient("127.0.0.1:1", timeout=30.0)
            self.sync.aio._stub = stub  # no channel: the stub answers
            if getattr(self.sync, "_direct", None) is not None:  # calls on this thread
                self.sync._direct._stub = stub  # (the stub never suspends either)

    def _run(self, coro: Any) -> Any:
        if self.sync is not None:
            return self.sync._loop.run(coro)
        return _STUB_LOOP.run(coro)

    async def _replay(self, touch: bool) -> int:
        t0 = time.thread_time_ns()
        if self.sync is None:
            n = 0
            async for page in self.stub.Read(None):
                n += len(page.events)
                if touch:
                    for e in page.events:
                        e.position  # noqa: B018
        else:
            got = await self.sync.aio.read_all(from_position=1, max_count=self.events)
            n = len(got)
            if touch:
                for e in got:
                    e.position  # noqa: B018
        assert n == self.events, n
        return time.thread_time_ns() - t0

    def replay(self, touch: bool = False) -> float:
        """Thread CPU ns per event."""
        return float(self._run(self._replay(touch))) / self.events

    async def _subscribe(self) -> int:
        n = SUBSCRIBE_BATCH * len(self.stub.messages)
        t0 = time.thread_time_ns()
        if self.sync is None:
            stream, got = self.stub.Subscribe(), 0
            while got < n:
                got += len((await stream.read()).events.events)
        else:
            sub = self.sync.aio.subscribe(start="start", window=1000)
            for _ in range(n):
                await sub.__anext__()
            await sub.close(0)
        return (time.thread_time_ns() - t0) // n

    def subscribe(self) -> float:
        """Thread CPU ns per event."""
        return float(self._run(self._subscribe()))

    def sync_subscribe(self) -> float:
        """Wall ns per event, from this thread."""
        n = SUBSCRIBE_BATCH * len(self.stub.messages)
        t0 = time.perf_counter_ns()
        if self.sync is None:
            got = 0
            for raw in self.stub.messages:
                got += len(pb.SubscribeResponse.FromString(raw).events.events)
        else:
            sub = self.sync.subscribe(start="start", window=1000)
            for _ in range(n):
                next(sub)
            sub.close(0)
        return (time.perf_counter_ns() - t0) / n

    async def _appends(self) -> int:
        t0 = time.thread_time_ns()
        for _ in range(self.calls):
            event = self.new_event("BenchEvent", data=DATA)
            if self.sync is None:
                await self.stub.Append(_request(event))
            else:
                await self.sync.aio.append("bench", event)
        return time.thread_time_ns() - t0

    def append(self) -> float:
        """Thread CPU ns per call, on the event loop."""
        return float(self._run(self._appends())) / self.calls

    def sync_append(self) -> float:
        """Wall ns per call, p50, from this thread."""
        lat = []
        for _ in range(self.calls):
            event = self.new_event("BenchEvent", data=DATA)
            t0 = time.perf_counter_ns()
            if self.sync is None:
                _sync_append(_request(event))
            else:
                self.sync.append("bench", event)
            lat.append(time.perf_counter_ns() - t0)
        return statistics.median(lat)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.aio._stub = None  # nothing to close
            self.sync.close()


def _sync_append(request: Any) -> Any:
    """A synchronous stub that answers at once."""
    return APPENDED


def _request(e: Any) -> Any:
    return pb.AppendRequest(
        stream="bench",
        events=[pb.ProposedEvent(event_id=e.event_id, event_type=e.event_type, data=e.data,
                                 content_type=e.content_type)],
    )  # fmt: skip


class _Loop:
    """An event loop in a thread, for the stubs' side of replay and append."""

    def __init__(self) -> None:
        from lighthouse_client.client import _LoopThread

        self.loop = _LoopThread()

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)


_STUB_LOOP: _Loop


MEASURES: dict[str, tuple[Callable[[Variant], float], str]] = {
    "replay": (Variant.replay, "CPU ns/event"),
    "replay + 1 field": (lambda v: v.replay(touch=True), "CPU ns/event"),
    "subscribe": (Variant.subscribe, "CPU ns/event"),
    "sync subscribe": (Variant.sync_subscribe, "wall ns/event"),
    "append (event loop)": (Variant.append, "CPU ns/call"),
    "sync append": (Variant.sync_append, "wall ns/call, p50"),
}


def main(argv: list[str] | None = None) -> int:
    global _STUB_LOOP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="git revision to compare with (main)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (7)")
    parser.add_argument("--events", type=int, default=45_000, help="events per replay")
    parser.add_argument("--calls", type=int, default=2_000, help="appends per measurement")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 50 or args.events < PAGE_EVENTS or args.calls < 1:
        parser.error("--rounds 1..50, --events >= 450, --calls >= 1")
    args.events -= args.events % PAGE_EVENTS
    tmp = Path(tempfile.mkdtemp(prefix="client-ab-"))
    try:
        base = load_base(args.base, tmp)
        _STUB_LOOP = _Loop()
        messages = subscription_messages(args.events // 2 // SUBSCRIBE_BATCH * SUBSCRIBE_BATCH)
        stub = Stub(page_bytes(), args.events // PAGE_EVENTS, messages)
        variants = {
            "stubs": Variant(None, stub, args.events, args.calls),
            "base": Variant(base, stub, args.events, args.calls),
            "new": Variant(lighthouse_client, stub, args.events, args.calls),
        }
        results = {m: {v: list[float]() for v in variants} for m in MEASURES}
        for measure, _ in MEASURES.values():  # warm-up
            for v in variants.values():
                measure(v)
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name, (measure, _) in MEASURES.items():
                for label in order:
                    results[name][label].append(measure(variants[label]))
            print(f"round {r + 1} of {args.rounds} done", file=sys.stderr, flush=True)
        for v in variants.values():
            v.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"client_ab: {args.base} (base) against this tree (new); {args.rounds} rounds, medians")
    print(f"{'':<22}{'unit':<20}{'stubs':>10}{'base':>10}{'new':>10}{'new/base':>10}"
          f"{'stubs/base':>12}{'stubs/new':>11}")  # fmt: skip
    for name, (_, unit) in MEASURES.items():
        med = {label: statistics.median(xs) for label, xs in results[name].items()}
        s, b, n = med["stubs"], med["base"], med["new"]
        print(f"{name:<22}{unit:<20}{s:>10,.0f}{b:>10,.0f}{n:>10,.0f}{n / b:>10.2f}"
              f"{s / b:>12.2f}{s / n:>11.2f}")  # fmt: skip
    print("(for a replay, stubs/x is x's rate as a fraction of the stubs')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
