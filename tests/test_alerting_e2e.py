"""The alerts end to end, with the real programs: a daemon on loopback, a real
Prometheus scraping its ``/metrics`` and evaluating the shipped rules, a real
Alertmanager with the example configuration, and a :class:`Receiver` in the
test standing in for PagerDuty and Slack.

Each test starts its own stack (:func:`watching`): the daemon first (its
HTTP address is the scrape target), then the receiver, Alertmanager and
Prometheus, all on free loopback ports with their files under the test's
temp dir, stopped by their pids when it ends. What differs from production
is only in the overlays (``tests/alerting.py``), so that an alert arrives
within seconds instead of minutes:

- the rules: every ``for:`` is 1 s (:func:`rules_overlay`); expressions,
  range windows, labels and annotations are the shipped ones. The latency
  rule's 5 min window needs no shortening: a fresh Prometheus has seen only
  this test's appends, so its window holds nothing else.
- Prometheus: the example configuration scraping the test's daemon and
  evaluating every second (:func:`prometheus_overlay`).
- Alertmanager: the example configuration with its PagerDuty ``url`` and
  Slack ``api_url`` pointed at the receiver, and every ``group_wait`` and
  ``group_interval`` 1 s (:func:`alertmanager_overlay`); routes, grouping
  and inhibition are the shipped ones.

Before each fault the test waits for Prometheus to have scraped the daemon
and evaluated every rule on what it scraped (each rule healthy: no runtime
error on real series), and checks that no critical alert is pending or
firing; so an alert that fires whatever the daemon does fails the test.

Warnings whose rules extrapolate a long window (``predict_linear`` over a
day, ``deriv`` over an hour) may also reach Slack here: a fresh Prometheus
has seconds of history, and their long ``for:`` that guards against that is
1 s. The tests assert nothing about them.

The writes-blocked and latency cases run against one process and against a
supervisor with two workers (whose gauges and histograms reach /metrics
through the multiprocess files); a killed daemon is the same either way.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from alerting import (
    RULES,
    Receiver,
    alertmanager,
    alertmanager_overlay,
    dump_yaml,
    http_json,
    load_yaml,
    prometheus,
    prometheus_overlay,
    query,
    rules_overlay,
    tool,
)
from support import DaemonFactory, append, error_info, events

from lighthouse_store import config
from lighthouse_store.faults import COMMIT_PAUSE_MS
from lighthouse_store.testing import DaemonProcess

RULE_COUNT = sum(len(g["rules"]) for g in load_yaml(RULES)["groups"])
# Generous bounds, only there so that a broken chain fails instead of hanging;
# each alert arrives within seconds of its cause.
ARRIVAL_TIMEOUT = 60.0
READY_TIMEOUT = 60.0


@dataclass
class Stack:
    """The daemon and what watches it."""

    daemon: DaemonProcess
    receiver: Receiver
    alertmanager: str  # base URLs
    prometheus: str

    @property
    def instance(self) -> str:
        return self.daemon.http_address

    def notified(self, path: str, alertname: str) -> list[Any]:
        """The bodies that reached ``/pagerduty`` or ``/slack`` about
        ``alertname`` (firing or resolved, on any instance)."""
        return [
            b for p, b in list(self.receiver.received) if p == path and _about(p, b)[0] == alertname
        ]

    def wait_notified(self, path: str, alertname: str) -> Any:
        """The first notification to ``path`` of ``alertname`` firing on this daemon."""
        return self.receiver.wait_for(
            lambda p, b: p == path and _about(p, b) == (alertname, self.instance, True),
            ARRIVAL_TIMEOUT,
        )

    def active(self, selector: str) -> list[dict[str, Any]]:
        """Alerts pending or firing in Prometheus that match ``selector``."""
        return query(self.prometheus, f"ALERTS{{{selector}}}")

    def wait_watched(self) -> None:
        """Until Prometheus scrapes the daemon and has evaluated every rule
        on a scrape: each rule evaluated, with no error."""
        deadline = time.monotonic() + READY_TIMEOUT
        up = 'up{job="lighthouse"} == 1'
        while not query(self.prometheus, up):
            assert time.monotonic() < deadline, f"Prometheus never scraped {self.instance}"
            time.sleep(0.2)
        # The rules form one group, evaluated together. The first evaluation
        # to end from here may have begun before that scrape; the second has not.
        evaluations = [self._rules()[0]["lastEvaluation"]]
        while len(evaluations) < 3:
            assert time.monotonic() < deadline, "Prometheus did not evaluate the rules"
            time.sleep(0.2)
            rules = self._rules()
            if rules[0]["lastEvaluation"] != evaluations[-1]:
                evaluations.append(rules[0]["lastEvaluation"])
        assert len(rules) == RULE_COUNT
        assert all(r["health"] == "ok" for r in rules), [
            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
        ]

    def _rules(self) -> list[dict[str, Any]]:
        answer = http_json(f"{self.prometheus}/api/v1/rules?type=alert")
        return [r for g in answer["data"]["groups"] for r in g["rules"]]

    def assert_no_critical_alert(self) -> None:
        assert not self.active('severity="critical"'), self.active('severity="critical"')
        assert not [b for p, b in list(self.receiver.received) if p == "/pagerduty"]

    def receivers_of(self, alertname: str) -> set[str]:
        """The receivers of the Alertmanager groups holding ``alertname``."""
        groups = http_json(f"{self.alertmanager}/api/v2/alerts/groups")
        return {
            g["receiver"]["name"]
            for g in groups
            if any(a["labels"]["alertname"] == alertname for a in g["alerts"])
        }


def _about(path: str, body: Any) -> tuple[str, str, bool]:
    """The alert name and instance a notification is about, and whether it
    says the alert fires (grouped by both, each notification has one of each).
    PagerDuty's: Alertmanager's default details list the labels; Slack's: the
    example configuration's title, ``[FIRING] <alertname> on <instance>``."""
    if path == "/pagerduty":
        details = body["payload"]["custom_details"]
        text = details.get("firing", "") + details.get("resolved", "")
        labels = dict(re.findall(r"^ - (\w+) = (.*)$", text, re.MULTILINE))
        firing = body["event_action"] == "trigger"
        return labels.get("alertname", ""), labels.get("instance", ""), firing
    status, _, rest = body["attachments"][0]["title"].partition(" ")
    alertname, _, instance = rest.partition(" on ")
    return alertname, instance, status == "[FIRING]"


@contextlib.contextmanager
def watching(daemon: DaemonProcess, workdir: Path) -> Iterator[Stack]:
    """A receiver, Alertmanager and Prometheus watching ``daemon``, which
    Prometheus has scraped and evaluated the rules on."""
    tool("prometheus")  # skip before starting anything when it is missing
    tool("prometheus-alertmanager", "alertmanager")
    with Receiver() as receiver:
        am_config = dump_yaml(alertmanager_overlay(receiver.url), workdir / "alertmanager.yml")
        with alertmanager(am_config, workdir) as am_url:
            rules = dump_yaml(rules_overlay("1s"), workdir / "alerts.yml")
            config = prometheus_overlay(daemon.http_address, am_url.removeprefix("http://"), rules)
            prom_config = dump_yaml(config, workdir / "prometheus.yml")
            with prometheus(prom_config, workdir) as prom_url:
                stack = Stack(daemon, receiver, am_url, prom_url)
                stack.wait_watched()
                yield stack


def test_a_killed_daemon_pages_store_down(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    daemon = daemon_factory()
    with watching(daemon, tmp_path) as stack:
        stack.assert_no_critical_alert()
        daemon.kill9()
        page = stack.wait_notified("/pagerduty", "LighthouseStoreDown")
        assert page["routing_key"] == "test-routing-key"
        assert page["payload"]["severity"] == "critical"
        assert stack.receivers_of("LighthouseStoreDown") == {"pagerduty-critical"}


def fill(daemon: DaemonProcess, attempts: int = 400) -> int:
    """Append until the store refuses even a small event with STORAGE_FULL,
    halving the size at each refusal from 64 KiB (a map that cannot take a
    large batch may still take small ones, and the daemon's own ``$system``
    events are small: writes are blocked only when small ones are refused
    too); the number of appends acknowledged before."""
    stub = daemon.stub()
    size, acked = 8192, 0
    for _ in range(attempts):
        try:
            append(stub, "fill", events(8 if size == 8192 else 1, data=b"x" * size))
            acked += 1
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert error_info(err).reason == "STORAGE_FULL"
            if size <= 256:
                return acked
            size //= 2
    raise AssertionError(f"the map took {attempts} appends and is not full")


# A map that a few appends fill, and that stays that size where the daemon
# can grow its map online (a --max-map-size setting).
TINY_MAP = ["--map-size", "1MiB", "--preallocate", "0"]
if any(s.name == "max_map_size" for s in config.TABLE):
    TINY_MAP += ["--max-map-size", "1MiB"]


def test_a_full_map_pages_writes_blocked(
    daemon_factory: DaemonFactory, workers: int, tmp_path: Path
) -> None:
    daemon = daemon_factory(extra_args=TINY_MAP, workers=workers)
    with watching(daemon, tmp_path) as stack:
        stack.assert_no_critical_alert()
        assert fill(daemon) > 0
        page = stack.wait_notified("/pagerduty", "LighthouseWritesBlocked")
        assert page["payload"]["severity"] == "critical"
        assert stack.receivers_of("LighthouseWritesBlocked") == {"pagerduty-critical"}
        # The daemon is up: the page is the full map's, not a scrape failure's.
        assert not stack.notified("/pagerduty", "LighthouseStoreDown")


class Appender:
    """Appends one event at a time from a thread until stopped, at most
    ``limit`` appends or ``seconds``; errors are raised by :meth:`stop`."""

    def __init__(self, daemon: DaemonProcess, limit: int = 600, seconds: float = 120.0) -> None:
        self._stub = daemon.stub()
        self._limit, self._seconds = limit, seconds
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.appended = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self._seconds
        try:
            while (
                not self._stop.is_set()
                and self.appended < self._limit
                and time.monotonic() < deadline
            ):
                append(self._stub, "slow", events(1))
                self.appended += 1
        except BaseException as e:
            self._error = e

    def __enter__(self) -> Appender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self._seconds)
        assert not self._thread.is_alive(), "the appends did not stop"
        if self._error is not None:
            raise self._error


# Each group commit pauses this long before its appends are answered, so
# every append takes longer than the rule's 100 ms.
PAUSE_MS = 150


def test_slow_appends_warn_on_slack_and_do_not_page(
    daemon_factory: DaemonFactory, workers: int, tmp_path: Path
) -> None:
    env = {**os.environ, COMMIT_PAUSE_MS: str(PAUSE_MS)}
    daemon = daemon_factory(env=env, workers=workers)
    with watching(daemon, tmp_path) as stack:
        stack.assert_no_critical_alert()
        assert not stack.active('alertname="LighthouseAppendLatencyHigh"')
        with Appender(daemon) as appender:
            slack = stack.wait_notified("/slack", "LighthouseAppendLatencyHigh")
        assert appender.appended > 0
        assert (
            "Runbook: docs/runbooks.md#lighthouseappendlatencyhigh"
            in (slack["attachments"][0]["text"])
        )
        assert stack.receivers_of("LighthouseAppendLatencyHigh") == {"slack-warnings"}
        # A page would have left with the Slack message (one group_wait after
        # the alert reached Alertmanager); allow a few more seconds.
        time.sleep(3)
        assert not stack.notified("/pagerduty", "LighthouseAppendLatencyHigh")
        stack.assert_no_critical_alert()
