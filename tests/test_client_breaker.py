"""The client's circuit breaker (_breaker.py): pure logic with a hand-stepped
clock, then the client's use of it (_calls.py) against scripted in-process
servers (scripted.py, pytest-grpc): it counts calls, not attempts."""

from __future__ import annotations

import threading
import time

import pytest
from scripted import ScriptedStore, reply, unavailable

from lighthouse_client import (
    CircuitOpen,
    DeadlineExceeded,
    RetryPolicy,
    StoreClient,
    Unavailable,
)
from lighthouse_client._breaker import BreakerState, CircuitBreaker
from lighthouse_proto.v1 import store_pb2 as pb

grpc_max_workers = 4  # pytest-grpc's server threads (its default is one)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so mypy does not narrow it between reads."""
    return breaker.state


def _opened(clock: Clock, threshold: int = 3, timeout: float = 60.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, reset_timeout=timeout, clock=clock)
    for _ in range(threshold):
        breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    return breaker


def test_defaults_are_ten_failures_and_sixty_seconds() -> None:
    clock = Clock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(9):
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 59.999
    assert state(breaker) is BreakerState.OPEN
    clock.now += 0.001
    assert state(breaker) is BreakerState.HALF_OPEN


def test_closed_allows_and_counts_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=Clock())
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.consecutive_failures == 2
    assert breaker.allow()


def test_a_success_resets_the_count_so_failures_must_be_consecutive() -> None:
    breaker = CircuitBreaker(failure_threshold=3, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    assert breaker.consecutive_failures == 0
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN


def test_open_refuses_until_the_reset_timeout() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=30.0)
    assert not breaker.allow()
    clock.now += 29.0
    assert not breaker.allow()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 1.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_half_open_admits_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 60.0
    assert breaker.allow()
    assert not breaker.allow()
    assert not breaker.allow()
    assert state(breaker) is BreakerState.HALF_OPEN


def test_a_successful_probe_closes() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 60.0
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
    assert breaker.allow()
    assert breaker.allow()


def test_a_failed_probe_opens_for_another_full_timeout() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=60.0)
    clock.now += 100.0  # well past the first timeout
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 59.0
    assert state(breaker) is BreakerState.OPEN  # measured from the probe's failure
    clock.now += 1.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # a new probe


def test_late_failures_while_open_do_not_extend_the_window() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=60.0)
    clock.now += 50.0
    breaker.record_failure()  # a call let through before the breaker opened
    assert breaker.consecutive_failures == 4
    clock.now += 10.0
    assert state(breaker) is BreakerState.HALF_OPEN


def test_a_lost_probe_is_replaced_after_the_reset_timeout() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=60.0)
    clock.now += 60.0
    assert breaker.allow()  # this probe never reports
    clock.now += 59.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_only_one_of_many_threads_gets_the_probe() -> None:
    clock = Clock()
    breaker = _opened(clock)
    clock.now += 60.0
    threads = 16
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    results_lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        allowed = breaker.allow()
        with results_lock:
            results.append(allowed)

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(results) == [False] * (threads - 1) + [True]


def test_concurrent_failures_are_all_counted() -> None:
    breaker = CircuitBreaker(failure_threshold=10**9, clock=Clock())
    per_thread, threads = 2000, 8

    def fail() -> None:
        for _ in range(per_thread):
            breaker.record_failure()

    workers = [threading.Thread(target=fail) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert breaker.consecutive_failures == per_thread * threads


@pytest.mark.parametrize(("threshold", "timeout"), [(0, 60.0), (-1, 60.0), (3, -1.0)])
def test_rejects_nonsense_settings(threshold: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, reset_timeout=timeout)


def test_state_values_are_stable_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


# -- calls, not attempts ---------------------------------------------------------


def test_an_unreachable_attempt_is_not_counted_while_closed() -> None:
    breaker = CircuitBreaker(failure_threshold=1, clock=Clock())
    for _ in range(5):
        breaker.record_attempt_failure()  # the call retries; only its end counts
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_a_failed_probe_attempt_opens_again_at_once() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=60.0)
    clock.now += 60.0
    assert breaker.allow()  # the probe
    clock.now += 1.0
    breaker.record_attempt_failure()
    assert state(breaker) is BreakerState.OPEN
    assert breaker.open_for() == 60.0  # a full window from the probe's failure
    clock.now += 60.0
    assert breaker.allow()  # the next probe


def test_an_unreachable_attempt_while_open_does_not_extend_the_window() -> None:
    clock = Clock()
    breaker = _opened(clock, timeout=60.0)
    clock.now += 30.0
    breaker.record_attempt_failure()
    assert breaker.open_for() == 30.0


def test_open_for_is_the_time_left_until_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60.0, clock=clock)
    assert breaker.open_for() == 0.0
    breaker.record_failure()
    assert breaker.open_for() == 60.0
    clock.now += 45.0
    assert breaker.open_for() == 15.0
    clock.now += 15.0
    assert breaker.open_for() == 0.0  # half-open


# -- the client's calls, against a scripted server ---------------------------------

FAST = RetryPolicy(initial_backoff=0.001, max_backoff=0.01)
# How a call that could not reach the daemon ends: its last attempt was
# refused, or ran out of the call's time.
UNREACHABLE = (Unavailable, DeadlineExceeded)
INFO = pb.GetInfoResponse(head_position=7)


class SkewedClock:
    """Real time, plus a skew the test adds to jump to the half-open."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


def test_a_call_that_rides_out_an_outage_is_not_a_failure(
    store: ScriptedStore, grpc_addr: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=60.0)
    store.on("GetInfo", *[unavailable()] * 20, reply(INFO))
    with StoreClient(grpc_addr, timeout=10.0, retry=FAST, breaker=breaker) as client:
        assert client.info().head_position == 7  # 20 failed attempts, one call
    assert len(store.requests("GetInfo")) == 21
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_each_call_that_fails_counts_once_whatever_its_attempts(
    store: ScriptedStore, grpc_addr: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=60.0)
    policy = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)
    store.on("GetInfo", unavailable())
    with StoreClient(grpc_addr, timeout=10.0, retry=policy, breaker=breaker) as client:
        for failed in (1, 2, 3):
            with pytest.raises(Unavailable) as err:
                client.info()
            assert not isinstance(err.value, CircuitOpen)
            assert len(store.requests("GetInfo")) == 4 * failed
            assert breaker.consecutive_failures == failed
        assert state(breaker) is BreakerState.OPEN
    # A call free to retry for 10 s: 60 s to the half-open is past its deadline.
    with StoreClient(grpc_addr, timeout=10.0, retry=FAST, breaker=breaker) as client:
        started = time.monotonic()
        with pytest.raises(CircuitOpen) as refused:
            client.info()
        assert time.monotonic() - started < 5  # at once, not at its deadline
    assert refused.value.retry_after is not None and refused.value.retry_after > 50
    assert len(store.requests("GetInfo")) == 12  # refused locally


def test_a_call_with_time_left_waits_for_the_half_open_and_probes(
    store: ScriptedStore, grpc_addr: str
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.5)
    store.on("GetInfo", unavailable())
    with StoreClient(grpc_addr, timeout=10.0, retry=FAST, breaker=breaker) as client:
        with pytest.raises(UNREACHABLE):
            client.info(timeout=0.2)  # one failed call opens it
        opened = time.monotonic()
        assert state(breaker) is BreakerState.OPEN
        store.on("GetInfo", reply(INFO))
        assert client.info().head_position == 7  # waits for the half-open, then probes
    (probe,) = [c for c in store.calls["GetInfo"] if c.at > opened]
    assert probe.at - opened >= 0.45  # not sent while the breaker was open
    assert state(breaker) is BreakerState.CLOSED


def test_a_failed_probe_opens_the_breaker_again_at_once(
    store: ScriptedStore, grpc_addr: str
) -> None:
    clock = SkewedClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30.0, clock=clock)
    store.on("GetInfo", unavailable())
    with StoreClient(grpc_addr, timeout=5.0, retry=FAST, breaker=breaker) as client:
        with pytest.raises(UNREACHABLE):
            client.info(timeout=0.2)
        before = len(store.requests("GetInfo"))
        clock.skew += 30.0
        assert state(breaker) is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpen) as err:
            client.info()
    # One probe, and it reopened the breaker for a full window: the call, with
    # 5 s left and 30 s to the next half-open, stopped there.
    assert len(store.requests("GetInfo")) == before + 1
    assert err.value.retry_after is not None and err.value.retry_after > 25
    assert state(breaker) is BreakerState.OPEN
