"""The delivery measurement's placement on worker processes
(``perf/subscribers.py``, ``perf/subscription_phases.py``): real daemons on
127.0.0.1, tiny counts, no speed asserted."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))

import subscribers
from pool import ClientPool
from subscription_phases import QUICK_SUBS, SubscriptionPhases
from support import DaemonFactory

from lighthouse_proto.v1 import store_pb2 as pb
from lighthouse_proto.v1 import store_pb2_grpc as pb_grpc

TINY_SUBS = dataclasses.replace(
    QUICK_SUBS, delivery_warmup=5, delivery_events=20, fanout_processes=1, cap_s=20.0
)


def _pid_of(channel: object) -> int:
    stub = pb_grpc.EventStoreServiceStub(channel)
    return int(stub.GetInfo(pb.GetInfoRequest(), timeout=10).worker_pid)


def test_the_appender_reaches_the_worker_it_is_placed_on(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(workers=2)
    first, second = daemon.worker_pids()
    for target in (first, second):
        for same in (True, False):
            placement = subscribers.Placement(target, same)
            channel, pid, connections = subscribers.connect_to_worker(daemon.address, placement, 40)
            try:
                assert pid == _pid_of(channel)  # the channel kept the connection it tested
            finally:
                channel.close()
            assert (pid == target) is same and pid in (first, second)
            assert 1 <= connections <= 40


def test_a_placement_no_connection_can_reach_fails_the_phase_without_hanging(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()  # one process: there is no other worker
    errors: list[str] = []
    pool = ClientPool(2)
    try:
        phases = SubscriptionPhases(pool, daemon.address, daemon.pid, TINY_SUBS, errors, print)
        phases.delivery(same_worker=False)
        # The pool's processes are free again: the same phase on the same worker works.
        fine = phases.delivery(same_worker=True)
    finally:
        pool.close()
    (failure,) = errors
    assert f"no connection landed off worker {daemon.pid}" in failure
    assert fine["delivery_p50_ms"] > 0 and fine["delivery_events"] == 20
    assert fine["delivery_connections"] == 1
