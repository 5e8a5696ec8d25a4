"""The crash harness: mixed load on a real daemon, kill -9, restart, check.

One cycle, on one data dir that lives through every cycle:

1. load, bounded in count and time: writer threads append batches of events
   with fresh ids (random sizes, metadata) on connections of their own; a
   named consumer subscribes and acks what it receives; in some cycles a
   ``lighthouse-store backup`` runs beside them;
2. kill -9 at a random point (once a random number of events were
   acknowledged, or after a bounded time): the daemon, or the supervisor of
   two workers, which the kernel kills with it (``PR_SET_PDEATHSIG``);
3. restart, and check the whole log against what every client was told:
   every acknowledged event present, byte for byte, at the position and
   revision its ack named; positions and per-stream revisions gapless; each
   id once; nothing there that no client sent; the consumer's stored
   checkpoint at or above every one the daemon confirmed and at or below
   the highest the client acked; a finished backup's head at or below the
   log's;
4. the appends that got no answer (in flight at the kill) are sent again
   with the same ids, as a client retries: each is answered, once, with the
   positions it already had if it had been committed.

``verify_after_crash`` and ``Load`` also serve ``test_durability.py``.
"""

from __future__ import annotations

import json
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from support import (
    ThreadErrors,
    assert_matches,
    get_event,
    head,
    new_event,
    read_all,
    spread_channels,
)

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc
from lighthouse_store.testing import DaemonProcess

CONSUMER = "crash-harness"


@dataclass
class Acked:
    event: pb.ProposedEvent
    stream: str
    position: int
    revision: int


class Load:
    """Writer threads appending until told to stop or the daemon goes away."""

    def __init__(self, daemon: DaemonProcess, max_appends: int, seed: int = 0) -> None:
        self.daemon = daemon
        self.max_appends = max_appends
        self.seed = seed
        self.acked: dict[str, Acked] = {}
        self.sent: dict[str, tuple[str, pb.ProposedEvent]] = {}
        self.unanswered: list[tuple[str, list[pb.ProposedEvent]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = ThreadErrors()
        self.failures: list[grpc.StatusCode] = []
        self.threads: list[threading.Thread] = []
        self.channels: list[grpc.Channel] = []

    def start(self, writers: list[tuple[str, int]]) -> None:
        # Own channels (not the DaemonProcess's, which stop() closes first), so
        # in-flight calls see what the daemon does on SIGTERM / kill -9; one
        # connection each, dealt round the workers when there are several.
        channels = spread_channels(self.daemon, len(writers))
        for (name, batch), ch in zip(writers, channels, strict=True):
            self.channels.append(ch)
            stub = pb_grpc.EventStoreServiceStub(ch)
            th = threading.Thread(target=self._run, args=(name, batch, stub))
            self.threads.append(th)
            th.start()

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def _batch(self, rng: random.Random, name: str, i: int, size: int) -> list[pb.ProposedEvent]:
        return [
            new_event(
                "Load",
                f"{name}/{i}/{k}/".encode() * rng.randint(1, 200),
                metadata={"writer": name, "i": str(i)},
            )
            for k in range(rng.randint(1, size))
        ]

    def _run(self, name: str, batch_size: int, stub: Any) -> None:
        rng = random.Random(f"{self.seed}/{name}")
        try:
            for i in range(self.max_appends):
                if self.stop.is_set():
                    return
                stream = f"{name}-{i % 4}"
                batch = self._batch(rng, name, i, batch_size)
                with self.lock:
                    for ev in batch:
                        self.sent[ev.event_id] = (stream, ev)
                try:
                    resp = stub.Append(pb.AppendRequest(stream=stream, events=batch), timeout=10)
                except grpc.RpcError as err:
                    with self.lock:
                        self.failures.append(err.code())
                        self.unanswered.append((stream, batch))
                    return  # the daemon is gone
                with self.lock:
                    for k, ev in enumerate(batch):
                        self.acked[ev.event_id] = Acked(
                            ev,
                            stream,
                            resp.first_position + k,
                            resp.last_revision - (len(batch) - 1 - k),
                        )
        except BaseException as exc:
            self.errors.add(exc)

    def join(self) -> None:
        for th in self.threads:
            th.join(120)
            assert not th.is_alive(), "writer hung"
        for ch in self.channels:
            ch.close()
        self.errors.raise_first()


def verify_after_crash(
    stub: Any,
    acked: dict[str, Acked],
    sent: dict[str, tuple[str, pb.ProposedEvent]],
    previous: Sequence[pb.RecordedEvent] = (),
    *,
    every_get: bool = True,
) -> list[pb.RecordedEvent]:
    """The log after a restart against what the clients were told; the log.
    ``every_get``: also fetch each acknowledged event by id (GetEvent)."""
    got = read_all(stub)
    assert [e.position for e in got] == list(range(1, len(got) + 1)), "positions not gapless"
    assert head(stub) == len(got)
    # What was there before this load is unchanged (incl. checksum, recorded_at).
    assert got[: len(previous)] == list(previous)
    by_id = {e.event_id: e for e in got}
    assert len(by_id) == len(got), "an event id appears twice"
    # Every acknowledged event is there, intact, where the ack said.
    missing = [i for i in acked if i not in by_id]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    for event_id, a in acked.items():
        rec = by_id[event_id]
        assert_matches(rec, a.event)
        assert (rec.stream, rec.position, rec.revision) == (a.stream, a.position, a.revision)
        if every_get:
            assert get_event(stub, event_id) == rec
    # Everything recorded is something a writer sent, intact (no torn events).
    for rec in got:
        assert rec.event_id in sent, f"unknown event at position {rec.position}"
        stream, ev = sent[rec.event_id]
        assert rec.stream == stream
        assert_matches(rec, ev)
    # Per-stream revisions gapless.
    counts: dict[str, int] = {}
    for e in got:
        assert e.revision == counts.get(e.stream, 0), (e.stream, e.revision)
        counts[e.stream] = e.revision + 1
    return got


class Consumer:
    """A named consumer that acks each page it receives, on a thread, until
    the stream ends; the highest ack it sent, and the highest the daemon
    confirmed stored (``checkpoint_stored_position``)."""

    def __init__(self, daemon: DaemonProcess, acks: set[int], confirmed: int) -> None:
        self.acks = acks  # every position acked, over every cycle
        self.confirmed = confirmed
        self.received = 0
        self.error: grpc.RpcError | None = None
        self._acks: queue.Queue[int | None] = queue.Queue()
        self._channel = daemon.connect()
        stub = pb_grpc.EventStoreServiceStub(self._channel)
        self._call = stub.Subscribe(self._requests(), timeout=120)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[pb.SubscribeRequest]:
        yield pb.SubscribeRequest(options=pb.SubscribeOptions(consumer=CONSUMER, from_start={}))
        while (position := self._acks.get()) is not None:
            yield pb.SubscribeRequest(ack_position=position)

    def _run(self) -> None:
        try:
            for msg in self._call:
                kind = msg.WhichOneof("kind")
                if kind == "events" and msg.events.events:
                    last = msg.events.events[-1].position
                    self.received += len(msg.events.events)
                    # Noted before it is sent: a stored checkpoint is always one of these.
                    self.acks.add(last)
                    self._acks.put(last)
                elif kind == "checkpoint_stored_position":
                    self.confirmed = max(self.confirmed, msg.checkpoint_stored_position)
        except grpc.RpcError as err:
            self.error = err

    def close(self) -> None:
        self._acks.put(None)
        self._call.cancel()
        self._thread.join(30)
        assert not self._thread.is_alive(), "consumer hung"
        self._channel.close()


def stored_checkpoint(stub: Any) -> int:
    """Where the consumer resumes: its stored checkpoint (0: none)."""
    done = threading.Event()

    def requests() -> Iterator[pb.SubscribeRequest]:
        yield pb.SubscribeRequest(options=pb.SubscribeOptions(consumer=CONSUMER, from_start={}))
        done.wait(30)

    call = stub.Subscribe(requests(), timeout=30)
    try:
        first = next(call)
        return int(first.confirmation.start_after_position)
    finally:
        done.set()
        call.cancel()


class Backup:
    """``lighthouse-store backup`` of the daemon's data dir, as a process."""

    def __init__(self, data_dir: Path, to: Path) -> None:
        self.to = to
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lighthouse_store", "backup",
             "--data-dir", str(data_dir), "--to", str(to)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def finish(self, timeout: float = 60.0) -> int:
        """Wait for it (killed by its pid after ``timeout``); the manifest's head."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            raise AssertionError("the backup did not finish") from None
        assert self.proc.returncode == 0, err.decode(errors="replace")[-2000:]
        manifest = json.loads((self.to / "manifest.json").read_text())
        return int(manifest["head_position"])


@dataclass
class Totals:
    cycles: int = 0
    worker_cycles: int = 0  # cycles with a supervisor and two workers
    backups: int = 0
    acknowledged: int = 0  # events acknowledged (as first answered, or on a retry)
    retried: int = 0  # appends re-sent after a kill, and answered
    checked: int = 0  # events checked in the last pass (the whole log)
    consumer_received: int = 0
    confirmed: int = 0  # the consumer's highest checkpoint the daemon confirmed stored
    seconds: float = 0.0
    heads: list[int] = field(default_factory=list)


class CrashHarness:
    """Runs cycles against one daemon on one data dir (see the module docstring)."""

    def __init__(self, daemon: DaemonProcess, work: Path, seed: int) -> None:
        self.daemon = daemon
        self.work = work
        self.rng = random.Random(seed)
        self.seed = seed
        self.acked: dict[str, Acked] = {}
        self.sent: dict[str, tuple[str, pb.ProposedEvent]] = {}
        self.previous: list[pb.RecordedEvent] = []
        self.acks: set[int] = set()
        self.confirmed = 0
        self.unanswered: list[tuple[str, list[pb.ProposedEvent]]] = []
        self.totals = Totals()

    def cycle(self, n: int, *, workers: int, backup: bool) -> None:
        started = time.monotonic()
        d = self.daemon
        if d.running() and d.workers != workers:
            assert d.stop(timeout=60) == 0
        if not d.running():
            d.workers = workers
            d.start()
        self._retry_unanswered()
        load = Load(d, max_appends=2000, seed=self.seed * 1000 + n)
        load.start([(f"c{n}a", 1), (f"c{n}b", 5), (f"c{n}c", 20)])
        consumer = Consumer(d, self.acks, self.confirmed)
        copy = Backup(d.data_dir, self.work / f"backup{n}") if backup else None
        target = self.rng.randint(20, 600)
        deadline = time.monotonic() + self.rng.uniform(0.2, 2.0)
        while load.acked_count() < target and time.monotonic() < deadline:
            if load.errors.errors or not any(t.is_alive() for t in load.threads):
                break
            time.sleep(0.005)
        pids = d.worker_pids()
        d.kill9()
        _wait_gone(pids)
        load.stop.set()
        load.join()
        assert load.failures, "the kill did not interrupt the load"
        # The kill is all that stopped it: no append was refused.
        assert set(load.failures) == {grpc.StatusCode.UNAVAILABLE}, load.failures
        consumer.close()
        self.confirmed = consumer.confirmed
        self.acked.update(load.acked)
        self.sent.update(load.sent)
        self.unanswered = load.unanswered

        d.start()  # the check runs on the restarted daemon, as a user would see it
        stub = d.stub()
        self.previous = verify_after_crash(
            stub, self.acked, self.sent, self.previous, every_get=False
        )
        stored = stored_checkpoint(stub)
        # A position the client acked (none: 0), never behind one the daemon
        # confirmed stored, never past the highest the client acked.
        assert stored in self.acks | {0}, f"stored checkpoint {stored} was never acked"
        assert self.confirmed <= stored <= max(self.acks, default=0), (self.confirmed, stored)
        t = self.totals
        if copy is not None:
            assert copy.finish() <= len(self.previous)
            t.backups += 1
        t.cycles += 1
        t.worker_cycles += workers > 1
        t.acknowledged = len(self.acked)
        t.checked = len(self.previous)
        t.consumer_received += consumer.received
        t.confirmed = self.confirmed
        t.heads.append(len(self.previous))
        t.seconds += time.monotonic() - started

    def finish(self) -> None:
        """After the last cycle: the last retries, a last check, a clean stop."""
        self._retry_unanswered()
        self.previous = verify_after_crash(self.daemon.stub(), self.acked, self.sent, self.previous)
        self.totals.acknowledged = len(self.acked)
        self.totals.checked = len(self.previous)
        assert self.daemon.stop(timeout=60) == 0

    def _retry_unanswered(self) -> None:
        """Send again, with the same ids, what got no answer before the kill."""
        stub = self.daemon.stub()
        for stream, batch in self.unanswered:
            resp = stub.Append(pb.AppendRequest(stream=stream, events=batch), timeout=30)
            for k, ev in enumerate(batch):
                position = resp.first_position + k
                already = self.previous[position - 1] if position <= len(self.previous) else None
                if already is not None:  # committed before the kill: answered where it is
                    assert already.event_id == ev.event_id, "a retry was answered elsewhere"
                self.acked[ev.event_id] = Acked(
                    ev, stream, position, resp.last_revision - (len(batch) - 1 - k)
                )
            self.totals.retried += 1
        self.unanswered = []


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Until the killed supervisor's workers are gone too (PR_SET_PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers outlived their supervisor: {pids}"
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie holds nothing
