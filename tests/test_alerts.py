"""The alerting configuration in deploy/, checked with the real tools: promtool
(the rules, their unit tests, the example Prometheus configuration), amtool
(the Alertmanager configuration and its routes) and a real Alertmanager (the
inhibition); plus the overlays the end-to-end test uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from alerting import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RULES,
    RUNBOOKS,
    Receiver,
    alertmanager,
    alertmanager_overlay,
    dump_yaml,
    http_json,
    load_yaml,
    prometheus_overlay,
    rules_overlay,
    tool,
)

RULE_TEST_FILES = sorted(RULE_TESTS.glob("*.yml"))
ALERTS: list[dict[str, Any]] = [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]
ALERT_NAMES = [r["alert"] for r in ALERTS]


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)


def check(*cmd: str | Path) -> str:
    result = run(*cmd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


# -- the rules -----------------------------------------------------------------


def test_promtool_check_rules() -> None:
    out = check(tool("promtool"), "check", "rules", RULES)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out


def test_promtool_check_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = RULES.read_text().replace('up{job="lighthouse"} == 0', "upp(up) == 0", 1)
    (tmp_path / "alerts.yml").write_text(broken)
    result = run(tool("promtool"), "check", "rules", tmp_path / "alerts.yml")
    assert result.returncode != 0 and "upp" in result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert RULE_TEST_FILES
    out = check(tool("promtool"), "test", "rules", *RULE_TEST_FILES)
    # promtool only warns about a rule file it cannot find, and tests no rule.
    assert "WARNING" not in out and out.count("SUCCESS") == len(RULE_TEST_FILES)


def test_the_issue_s_alerts_with_their_severities() -> None:
    by_severity: dict[str, set[str]] = {}
    for rule in ALERTS:
        by_severity.setdefault(rule["labels"]["severity"], set()).add(rule["alert"])
    assert by_severity == {
        "critical": {
            "LighthouseStoreDown",
            "LighthouseCorruptionDetected",
            "LighthouseWritesBlocked",
        },
        "warning": {
            "LighthouseAppendLatencyHigh",
            "LighthouseErrorRatioHigh",
            "LighthouseDiskUsageHigh",
            "LighthouseMapUsageHigh",
            "LighthouseDiskFillingUp",
            "LighthouseMapFillingUp",
            "LighthouseSubscriberLagGrowing",
            "LighthouseOpenFdsHigh",
            "LighthouseMemoryGrowing",
        },
    }


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_annotations_and_a_runbook_section(name: str) -> None:
    (rule,) = [r for r in ALERTS if r["alert"] == name]
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert all(annotations[k].strip() for k in ("summary", "description"))
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/runbooks.md"
    headings = re.findall(r"^##+ (.+)$", RUNBOOKS.read_text(), re.MULTILINE)
    assert anchor == github_anchor(name)
    assert anchor in [github_anchor(h) for h in headings]


def _cases(name: str, firing: bool, tmp_path: Path) -> list[Path]:
    """Copies of the rule test files (beside a copy of the rules) that keep
    only ``name``'s firing (or quiet: nothing expected) cases."""
    files = []
    for source in RULE_TEST_FILES:
        data = load_yaml(source)
        tests = []
        for test in data["tests"]:
            cases = [
                c
                for c in test.get("alert_rule_test", [])
                if c["alertname"] == name and bool(c.get("exp_alerts")) == firing
            ]
            if cases:
                tests.append({**test, "alert_rule_test": cases, "promql_expr_test": []})
        if tests:
            data["tests"] = tests
            files.append(dump_yaml(data, tmp_path / "tests" / source.name))
    return files


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_a_firing_and_a_quiet_case(name: str, tmp_path: Path) -> None:
    """Break the alert both ways and see its unit tests fail: never firing
    fails a firing case, always firing (after its ``for:``) a quiet one."""
    promtool = tool("promtool")
    rules = load_yaml(RULES)
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == name]
    expr = rule["expr"]
    for firing, broken in ((True, "vector(1) < 0"), (False, "vector(1)")):
        files = _cases(name, firing, tmp_path / str(firing))
        assert files, f"{name} has no {'firing' if firing else 'quiet'} case"
        rule["expr"] = expr
        dump_yaml(rules, tmp_path / str(firing) / "alerts.yml")
        check(promtool, "test", "rules", *files)
        rule["expr"] = broken
        dump_yaml(rules, tmp_path / str(firing) / "alerts.yml")
        result = run(promtool, "test", "rules", *files)
        assert result.returncode != 0, f"{name} with expr {broken!r} passed:\n{result.stdout}"


# -- the example Prometheus configuration and the test overlay ---------------------


def test_example_prometheus_config() -> None:
    out = check(tool("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert "SUCCESS: 1 rule files found" in out
    config = load_yaml(PROMETHEUS_CONFIG)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "lighthouse"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9464"]}]


def test_prometheus_overlay_changes_the_intervals_and_addresses_only(tmp_path: Path) -> None:
    rules = dump_yaml(rules_overlay("1s"), tmp_path / "alerts.yml")
    overlay = prometheus_overlay("127.0.0.1:1001", "127.0.0.1:1002", rules)
    out = check(tool("promtool"), "check", "config", dump_yaml(overlay, tmp_path / "p.yml"))
    assert "SUCCESS: 1 rule files found" in out
    assert overlay.pop("global") == {
        "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"
    }  # fmt: skip
    assert overlay.pop("rule_files") == [str(rules)]
    (am,) = overlay["alerting"]["alertmanagers"]
    assert am.pop("static_configs") == [{"targets": ["127.0.0.1:1002"]}]
    (job,) = overlay["scrape_configs"]
    assert job.pop("static_configs") == [{"targets": ["127.0.0.1:1001"]}]
    original = load_yaml(PROMETHEUS_CONFIG)
    del original["global"], original["rule_files"]
    original["alerting"]["alertmanagers"][0].pop("static_configs")
    original["scrape_configs"][0].pop("static_configs")
    assert overlay == original


def test_rules_overlay_shortens_every_for_and_nothing_else(tmp_path: Path) -> None:
    overlay = rules_overlay("2s")
    original = load_yaml(RULES)
    shortened = [r.pop("for", None) for g in overlay["groups"] for r in g["rules"]]
    before = [r.pop("for", None) for g in original["groups"] for r in g["rules"]]
    assert shortened == ["2s" if f else None for f in before] and "2s" not in before
    assert overlay == original
    check(tool("promtool"), "check", "rules", dump_yaml(rules_overlay("2s"), tmp_path / "a.yml"))


def test_rules_overlay_fires_within_seconds(tmp_path: Path) -> None:
    """Evaluated every second, the overlay's "store down" fires 3 s after
    the first failed scrape; the shipped rule (for: 1m) does not yet."""
    firing = {
        "expr": 'ALERTS{alertname="LighthouseStoreDown", alertstate="firing"}',
        "eval_time": "5s",
        "exp_samples": [
            {
                "labels": 'ALERTS{alertname="LighthouseStoreDown", alertstate="firing",'
                ' severity="critical", job="lighthouse", instance="db-1:9464"}',
                "value": 1,
            }
        ],
    }
    test = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1s",
        "tests": [
            {
                "interval": "1s",
                "input_series": [
                    {"series": 'up{job="lighthouse", instance="db-1:9464"}', "values": "1 1 0x8"}
                ],
                "promql_expr_test": [firing],
            }
        ],
    }
    promtool = tool("promtool")
    dump_yaml(rules_overlay("2s"), tmp_path / "alerts.yml")
    check(promtool, "test", "rules", dump_yaml(test, tmp_path / "test.yml"))
    dump_yaml(load_yaml(RULES), tmp_path / "alerts.yml")
    assert run(promtool, "test", "rules", tmp_path / "test.yml").returncode != 0


# -- Alertmanager ------------------------------------------------------------------


def test_amtool_check_config() -> None:
    out = check(tool("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert "SUCCESS" in out and "1 inhibit rules" in out


def test_amtool_check_config_catches_a_mistake(tmp_path: Path) -> None:
    broken = ALERTMANAGER_CONFIG.read_text().replace("receiver: pagerduty-critical", "receiver: pd")
    (tmp_path / "am.yml").write_text(broken)
    result = run(tool("amtool"), "check-config", tmp_path / "am.yml")
    assert result.returncode != 0 and '"pd"' in result.stdout + result.stderr


RECEIVERS = {"critical": "pagerduty-critical", "warning": "slack-warnings"}


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_amtool_routes_each_alert_by_its_severity(name: str) -> None:
    (rule,) = [r for r in ALERTS if r["alert"] == name]
    severity = rule["labels"]["severity"]
    out = check(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={RECEIVERS[severity]}", f"alertname={name}", f"severity={severity}",
        "job=lighthouse", "instance=db-1:9464",
    )  # fmt: skip
    assert out.splitlines()[0] == RECEIVERS[severity]


def test_amtool_routes_test_catches_a_wrong_receiver() -> None:
    result = run(
        tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}",
        "--verify.receivers=pagerduty-critical", "alertname=LighthouseDiskUsageHigh",
        "severity=warning", "job=lighthouse", "instance=db-1:9464",
    )  # fmt: skip
    assert result.returncode != 0


def _alert(name: str, severity: str, instance: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name,
            "severity": severity,
            "job": "lighthouse",
            "instance": instance,
        },
        "annotations": {"summary": f"{name} on {instance}", "runbook_url": "docs/runbooks.md"},
    }


def test_store_down_pages_and_holds_back_that_daemon_s_other_alerts(tmp_path: Path) -> None:
    """A real Alertmanager with the example configuration (its integrations
    pointed at a receiver here): "store down" on db-1 pages through the
    PagerDuty integration; db-1's warning is inhibited; db-2's same warning
    goes to Slack."""
    with Receiver() as receiver:
        config = dump_yaml(alertmanager_overlay(receiver.url), tmp_path / "am.yml")
        with alertmanager(config, tmp_path) as url:
            http_json(
                f"{url}/api/v2/alerts",
                [
                    _alert("LighthouseStoreDown", "critical", "db-1:9464"),
                    _alert("LighthouseErrorRatioHigh", "warning", "db-1:9464"),
                    _alert("LighthouseErrorRatioHigh", "warning", "db-2:9464"),
                ],
            )
            page = receiver.wait_for(lambda path, _: path == "/pagerduty")
            assert page["routing_key"] == "test-routing-key"
            assert page["payload"]["severity"] == "critical"
            assert "LighthouseStoreDown" in page["payload"]["summary"]
            slack = receiver.wait_for(lambda path, _: path == "/slack")
            assert "LighthouseErrorRatioHigh on db-2:9464" in slack["attachments"][0]["title"]
            states = {
                (a["labels"]["alertname"], a["labels"]["instance"]): a["status"]
                for a in http_json(f"{url}/api/v2/alerts")
            }
            assert states[("LighthouseErrorRatioHigh", "db-1:9464")]["inhibitedBy"]
            assert states[("LighthouseErrorRatioHigh", "db-1:9464")]["state"] == "suppressed"
            assert not states[("LighthouseErrorRatioHigh", "db-2:9464")]["inhibitedBy"]
            assert not states[("LighthouseStoreDown", "db-1:9464")]["inhibitedBy"]
    paths = [path for path, _ in receiver.received]
    assert paths.count("/pagerduty") >= 1
    assert all("db-1" not in str(body) for path, body in receiver.received if path == "/slack"), (
        "db-1's inhibited warning reached Slack"
    )
