"""The alert and recording rules, checked by Prometheus's own promtool."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.tools import DEPLOY, ROOT, RULES, rules, tool

UNIT_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True,
                          timeout=120)


def test_promtool_check_rules() -> None:
    result = run("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULES)


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    assert UNIT_TESTS
    result = run("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    """deploy/prometheus/prometheus.yml with its rule glob pointed at the repository."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # what compose mounts
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = run("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {job["job_name"] for job in config["scrape_configs"]} == {
        "outbox-relay", "outbox-consumer", "outbox-cdc"}


def test_every_alert_has_a_severity_text_and_a_runbook_section() -> None:
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    headings = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
                for h in re.findall(r"(?m)^#+ (.+)$", docs)}
    alerts = [r for r in rules() if "alert" in r]
    assert len(alerts) >= 15
    assert len({a["alert"] for a in alerts}) == len(alerts), "alert names repeat"
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert {"summary", "description", "runbook"} <= alert["annotations"].keys(), name
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert alert["annotations"]["runbook"].startswith("docs/monitoring.md#"), name
        assert anchor in headings, f"{name}: no section #{anchor} in docs/monitoring.md"


def test_every_alert_fires_in_a_promtool_unit_test() -> None:
    fired = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert {r["alert"] for r in rules() if "alert" in r} == fired


def test_recording_rules_are_named_level_metric_operation_and_all_used() -> None:
    records = [r for r in rules() if "record" in r]
    dashboard = (DEPLOY / "grafana" / "dashboards" / "outbox.json").read_text()
    exprs = " ".join(r["expr"] for r in rules())
    for rule in records:
        name = rule["record"]
        assert re.fullmatch(r"outbox:[a-z0-9_]+:[a-z0-9_]+", name), name
        assert name in dashboard or name in exprs, f"{name} is read by no alert and no panel"
