"""Subscribe: which acks and follow-up messages a subscription takes (real daemon).

An ack names a position this subscription told the client about (an event, or
the confirmation, a checkpoint, caught-up or fell-behind position); anything
above that is INVALID_ARGUMENT, even at or below the head, since it would move
the consumer past events it was never sent (subscriptions.py, "Which acks").
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from subscriber import Subscriber
from support import DaemonFactory, append, assert_invalid, error_info, events

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_store.testing import DaemonProcess


def ended_with(sub: Subscriber) -> grpc.RpcError:
    """The error that ends the subscription (bounded wait)."""
    deadline = time.monotonic() + 30
    while sub.next(max(0.01, deadline - time.monotonic())) is not None:
        pass
    assert sub.error is not None, "the subscription ended without an error"
    return sub.error


def stored(sub: Subscriber, position: int) -> None:
    """Wait until the daemon confirms an ack of ``position`` is stored."""
    got = -1
    while got < position:
        got = sub.next_kind("checkpoint_stored_position").checkpoint_stored_position
    assert got == position


def starts_after(stub: Any, consumer: str) -> int:
    """Where a new subscription of ``consumer`` starts: its stored position."""
    sub = Subscriber(stub, pb.SubscribeOptions(consumer=consumer, from_start={}))
    try:
        return sub.next_kind("confirmation").confirmation.start_after_position
    finally:
        sub.close()


def test_an_ack_beyond_what_was_delivered_is_refused(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    append(stub, "s", events(100))
    # Ten credits: the daemon sends 1-10 and nothing more until given credits.
    sub = Subscriber(stub, pb.SubscribeOptions(consumer="c", from_start={}, initial_credits=10))
    try:
        got, _ = sub.messages_until(10)
        assert [e.position for e in got] == list(range(1, 11))
        sub.ack(10)
        stored(sub, 10)
        sub.ack(50)  # at or below the head (100), never sent on this subscription
        err = ended_with(sub)
    finally:
        sub.close()
    assert_invalid(err, "ack_position", daemon.data_dir)
    assert "(10)" in (err.details() or ""), err.details()
    assert error_info(err).metadata["last_delivered"] == "10"
    assert starts_after(stub, "c") == 10  # the refused ack moved nothing


def test_filter_checkpoints_are_ackable_and_nothing_above_them(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory(extra_args=["--subscribe-min-checkpoint-interval", "1"])
    stub = daemon.stub()
    append(stub, "s", events(5, "Noise"))
    options = pb.SubscribeOptions(
        consumer="f",
        from_start={},
        checkpoint_interval=10,
        filter=pb.EventFilter(event_types=["Wanted"]),
    )
    sub = Subscriber(stub, options)
    try:
        assert sub.next_kind("caught_up_position").caught_up_position == 5
        append(stub, "s", events(10, "Noise"))  # 6-15: one page, ten positions unmatched
        assert sub.next_kind("checkpoint_position").checkpoint_position == 15
        append(stub, "s", events(5, "Noise"))  # 16-20: no message (fewer than ten)
        sub.ack(15)  # a checkpoint: no event was sent at all
        stored(sub, 15)
        sub.ack(20)  # at the head, skipped by the filter, but never told to the client
        err = ended_with(sub)
    finally:
        sub.close()
    assert_invalid(err, "ack_position", daemon.data_dir)
    assert error_info(err).metadata["last_delivered"] == "15"
    assert starts_after(stub, "f") == 15


def test_the_start_and_caught_up_positions_are_ackable(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(extra_args=["--subscribe-min-checkpoint-interval", "1"])
    stub = daemon.stub()
    append(stub, "s", events(10))
    # From the end: no event sent, but the client was told 10 (confirmation, caught up).
    live = Subscriber(stub, pb.SubscribeOptions(consumer="live", from_end={}))
    # Filtered, 25 positions and a checkpoint every 10: checkpoints 10 and 20, then
    # caught up at 25 (above the last checkpoint).
    append(stub, "s", events(15))
    filtered = Subscriber(
        stub,
        pb.SubscribeOptions(
            consumer="filtered",
            from_start={},
            checkpoint_interval=10,
            filter=pb.EventFilter(event_types=["Never"]),
        ),
    )
    try:
        assert live.next_kind("confirmation").confirmation.start_after_position == 10
        live.ack(10)
        stored(live, 10)
        assert filtered.next_kind("caught_up_position").caught_up_position == 25
        filtered.ack(25)
        stored(filtered, 25)
    finally:
        live.close()
        filtered.close()


def test_what_follows_the_options_is_named_when_refused(daemon: DaemonProcess) -> None:
    stub = daemon.stub()
    cases = [
        (
            pb.SubscribeRequest(),
            "kind: a message after the options must set credits or ack_position",
        ),
        (
            pb.SubscribeRequest(options=pb.SubscribeOptions()),
            "options: only credits and acks may follow the options",
        ),
    ]
    for message, text in cases:
        sub = Subscriber(stub, pb.SubscribeOptions(from_start={}))
        try:
            sub.next_kind("caught_up_position")
            sub.send(message)
            err = ended_with(sub)
        finally:
            sub.close()
        assert_invalid(err, None, daemon.data_dir)
        assert err.details() == text


def test_a_consumer_never_moves_backwards(daemon: DaemonProcess) -> None:
    """A second subscription of a consumer acks a position below the one the
    consumer has stored; the consumer stays where it was."""
    stub = daemon.stub()
    append(stub, "s", events(50))
    first = Subscriber(stub, pb.SubscribeOptions(consumer="c", from_start={}))
    try:
        first.messages_until(50)
        first.ack(30)
        stored(first, 30)
        second = Subscriber(stub, pb.SubscribeOptions(consumer="c", from_start={}))
        try:
            assert second.next_kind("confirmation").confirmation.start_after_position == 30
            second.ack(10)  # at or below what it was told: taken, and durable (30 >= 10)
            stored(second, 10)
        finally:
            second.close()
    finally:
        first.close()
    assert starts_after(stub, "c") == 30
