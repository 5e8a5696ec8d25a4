"""What an outbox flush does with an entry the daemon refuses: decided by the
error's failure class (SPEC §4), checked for every exception class, and with a
real daemon whose store is corrupted under a queued append."""

from __future__ import annotations

from pathlib import Path

import pytest

from lighthouse_client import (
    CircuitBreaker,
    CircuitOpen,
    Corruption,
    DeadLetter,
    DeadlineExceeded,
    EventIdConflict,
    EventNotFound,
    FailureClass,
    Internal,
    InvalidRequest,
    NewEvent,
    NotFound,
    Outbox,
    Overloaded,
    PermissionDenied,
    StorageFull,
    StoreClient,
    StoreError,
    StreamNotFound,
    Unauthenticated,
    Unavailable,
    WrongExpectedRevision,
)
from lighthouse_client import exceptions as client_exceptions
from lighthouse_client._outbox import FlushAction, flush_action
from lighthouse_store.testing import DaemonProcess

DEAD_LETTER, WAIT, FAIL = FlushAction.DEAD_LETTER, FlushAction.WAIT, FlushAction.FAIL

# Every exception class the client raises, as the client builds it with no
# failure class in the details, and the action a flush takes for it.
BY_CLASS: dict[type[StoreError], FlushAction] = {
    StoreError: DEAD_LETTER,
    InvalidRequest: DEAD_LETTER,
    WrongExpectedRevision: DEAD_LETTER,
    EventIdConflict: DEAD_LETTER,
    NotFound: DEAD_LETTER,
    StreamNotFound: DEAD_LETTER,
    EventNotFound: DEAD_LETTER,
    PermissionDenied: DEAD_LETTER,
    Unauthenticated: DEAD_LETTER,
    Internal: DEAD_LETTER,
    Unavailable: WAIT,
    CircuitOpen: WAIT,
    Overloaded: WAIT,
    DeadlineExceeded: WAIT,
    Corruption: FAIL,
    StorageFull: WAIT,
}


def all_subclasses(cls: type[StoreError]) -> set[type[StoreError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= all_subclasses(sub)
    return found


def test_the_table_covers_every_exception_class() -> None:
    client_classes = {
        c for c in all_subclasses(StoreError) if c.__module__.startswith("lighthouse_client")
    }
    assert client_classes == set(BY_CLASS)
    exported = {getattr(client_exceptions, n) for n in client_exceptions.__all__}
    assert {c for c in exported if isinstance(c, type) and issubclass(c, StoreError)} <= set(
        BY_CLASS
    )


@pytest.mark.parametrize(
    ("cls", "action"), list(BY_CLASS.items()), ids=[c.__name__ for c in BY_CLASS]
)
def test_flush_action_for_each_exception_class(cls: type[StoreError], action: FlushAction) -> None:
    assert flush_action(cls("refused")) is action


@pytest.mark.parametrize(
    ("failure_class", "action"),
    [
        ("human_intervention", DEAD_LETTER),
        ("recoverable", WAIT),
        ("restart_required", FAIL),
    ],
)
@pytest.mark.parametrize("cls", [Internal, StoreError, Unavailable, Corruption])
def test_the_failure_class_in_the_details_decides(
    cls: type[StoreError], failure_class: str, action: FlushAction
) -> None:
    # The daemon's StorageFailure arrives as Internal marked restart_required.
    error = cls("refused", metadata={"failure_class": failure_class})
    assert error.failure_class is FailureClass(failure_class)
    assert flush_action(error) is action


def test_a_restart_required_refusal_keeps_the_entry_and_fails_new_appends(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    dead: list[DeadLetter] = []
    # A breaker that stays closed while the daemon is down, so that after the
    # restart the flush reaches the daemon instead of stopping at CircuitOpen.
    breaker = CircuitBreaker(failure_threshold=1_000_000)
    try:
        with StoreClient(
            daemon.address,
            timeout=30.0,
            outbox=outbox,
            breaker=breaker,
            on_conflict=dead.append,
            outbox_flush_interval=3600,
        ) as client:
            client.append("s", NewEvent("Before"))
            x = NewEvent("X", b'{"n": 1}')
            written = client.append("s", x)
            assert not written.queued
            client.append("s", NewEvent("After"))  # the daemon checks its head record on start
            daemon.stop()
            retry = client.append("s", x, timeout=1.0)  # an idempotent retry, queued
            assert retry.queued and len(outbox) == 1
            daemon.corrupt_record(written.first_position)
            daemon.start()
            client.info()  # reachable again (info reads no event record)

            assert client.flush_outbox() == 0
            assert [e.events for e in outbox.pending()] == [(x,)]
            assert dead == [] and outbox.dead_letters() == []

            with pytest.raises(Corruption) as err:
                client.append("other", NewEvent("Y"))
            assert err.value.failure_class is FailureClass.RESTART_REQUIRED
            assert err.value.position == written.first_position
            assert [e.events for e in outbox.pending()] == [(x,)]
            with pytest.raises(StreamNotFound):
                client.read_stream("other")
            assert dead == [] and outbox.dead_letters() == []
    finally:
        outbox.close()
