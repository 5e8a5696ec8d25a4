"""A blocking test-side subscriber over the real Subscribe RPC.

A background thread drains the response stream into a queue, so a test can
wait for messages with a timeout, send credits and acks, or stop reading
altogether (``paused``) to act as a stalled subscriber.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from lighthouse_proto.v1 import store_pb2 as pb

_END = object()


class Subscriber:
    def __init__(self, stub: Any, options: pb.SubscribeOptions, *, read: bool = True) -> None:
        self._requests: queue.Queue[pb.SubscribeRequest | None] = queue.Queue()
        self._requests.put(pb.SubscribeRequest(options=options))
        self.responses: queue.Queue[Any] = queue.Queue()
        self.call = stub.Subscribe(self._request_iter())
        self.error: grpc.RpcError | None = None
        self._reading = threading.Event()
        if read:
            self._reading.set()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _request_iter(self) -> Iterator[pb.SubscribeRequest]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _pump(self) -> None:
        try:
            for response in self.call:
                self._reading.wait()
                self.responses.put(response)
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.responses.put(_END)

    def resume_reading(self) -> None:
        self._reading.set()

    def credits(self, n: int) -> None:
        self._requests.put(pb.SubscribeRequest(credits=n))

    def ack(self, position: int) -> None:
        self._requests.put(pb.SubscribeRequest(ack_position=position))

    def send(self, request: pb.SubscribeRequest) -> None:
        self._requests.put(request)

    def next(self, timeout: float = 30.0) -> pb.SubscribeResponse | None:
        """The next message, or None when the stream ended."""
        item = self.responses.get(timeout=timeout)
        if item is _END:
            self.responses.put(_END)
            return None
        response: pb.SubscribeResponse = item
        return response

    def next_kind(self, kind: str, timeout: float = 30.0) -> pb.SubscribeResponse:
        """Skip to the next message of one kind (heartbeats etc. are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next(max(0.01, deadline - time.monotonic()))
            assert msg is not None, f"stream ended waiting for {kind}: {self.error}"
            if msg.WhichOneof("kind") == kind:
                return msg

    def messages_until(
        self, events_wanted: int, timeout: float = 60.0
    ) -> tuple[list[pb.RecordedEvent], list[pb.SubscribeResponse]]:
        """Collect until ``events_wanted`` events arrived; also every message."""
        got: list[pb.RecordedEvent] = []
        log: list[pb.SubscribeResponse] = []
        deadline = time.monotonic() + timeout
        while len(got) < events_wanted:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"got {len(got)} of {events_wanted} events in {timeout}s"
            msg = self.next(remaining)
            assert msg is not None, f"stream ended after {len(got)} events: {self.error}"
            log.append(msg)
            if msg.WhichOneof("kind") == "events":
                got.extend(msg.events.events)
        return got, log

    def quiet_for(self, seconds: float) -> list[pb.SubscribeResponse]:
        """Every message that arrives within ``seconds``."""
        out: list[pb.SubscribeResponse] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.next(remaining)
            except queue.Empty:
                break
            if msg is None:
                break
            out.append(msg)
        return out

    def close(self) -> None:
        self.call.cancel()
        self._requests.put(None)
        self._reading.set()
        self._thread.join(10)
