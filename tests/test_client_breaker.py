"""The client's circuit breaker (_breaker.py): pure logic, a hand-stepped clock."""

from __future__ import annotations

import threading

import pytest

from lighthouse_client._breaker import BreakerState, CircuitBreaker


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
