"""The monitoring kit against real processes: a relay, a consumer and the CDC exporter on the
real stack, scraped by a real Prometheus (Debian's package) that evaluates deploy/'s rules.

One set of processes per module: starting them costs more than the checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.launcher import free_port
from tests.deploy.promql import metric_names
from tests.deploy.tools import DASHBOARD, Prometheus, render_rules, rules, tool
from tests.harness import db
from tests.harness.kafka import create_topic
from tests.relay.conftest import OUTBOX_BIN, ensure_outbox, insert_events, spawn_relay

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.connect]

OUTBOX = "public.outbox"  # the relay's `outbox` target label
# Empty while the consume loop does not set the gauge (consumers/metrics.py defines it):
# allowed empty only as long as no consumer reports a poll.
UNSET_POLL_GAUGE = "outbox_consumer_last_poll_timestamp_seconds > 0"
NEEDS_POLL_GAUGE = {"outbox:consumer_last_poll_age_seconds:max"}


@dataclass
class Kit:
    database_url: str
    topic: str
    group: str
    connector: str
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exported: set[str] = field(default_factory=set)
    logs: Path = Path()

    def metrics(self, name: str) -> str:
        return httpx.get(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=5).text

    def value(self, name: str, metric: str) -> float:
        """A sample summed over its label sets, from the process's /metrics."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics(name)):
            total += sum(s.value for s in family.samples if s.name == metric)
        return total

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs.glob("*.log"))


def wait_until(what: str, check: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.3)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page can show, also for a labelled family that has no
    child yet (its HELP and TYPE lines are there, its samples are not)."""
    names = set()
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum",
                                                                  "_created"],
                "gauge": [""], "summary": ["_count", "_sum", "_created"]}
    for family in text_string_to_metric_families(text):
        names |= {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


@pytest.fixture(scope="module")
def kit(pg_url: str, template_db: str, kafka_bootstrap: str, connect_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    logs = tmp_path_factory.mktemp("kit-logs")
    name = db.clone_database(pg_url, template_db)
    url = db.with_dbname(pg_url, name)
    ensure_outbox(url)
    prefix = f"mk{uuid.uuid4().hex[:8]}"
    kit = Kit(url, f"{prefix}-order", f"{prefix}-group", f"{prefix}-connector",
              {"relay": free_port(), "consumer": free_port(), "exporter": free_port()},
              logs=logs)
    create_topic(kafka_bootstrap, kit.topic, partitions=2)
    slot = f"{prefix}_slot"
    with psycopg.connect(url, autocommit=True) as conn:
        # A real slot nothing streams from: what a deleted connector leaves behind.
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    env = {**os.environ, "OUTBOX_DATABASE_URL": url,
           "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "OUTBOX_CONNECT_URL": connect_url}
    try:
        kit.procs["relay"] = spawn_relay(url, kafka_bootstrap, prefix, "--metrics-port",
                                         str(kit.ports["relay"]), "--max-attempts", "1",
                                         log=logs / "relay.log")
        with (logs / "consumer.log").open("ab") as out:
            kit.procs["consumer"] = subprocess.Popen(
                [sys.executable, "-m", "tests.deploy.consumer_app", url, kafka_bootstrap,
                 kit.topic, kit.group, str(kit.ports["consumer"])],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with (logs / "exporter.log").open("ab") as out:
            kit.procs["exporter"] = subprocess.Popen(
                [str(OUTBOX_BIN), "connect", "exporter", "--port", str(kit.ports["exporter"]),
                 "--name", kit.connector], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        for proc_name, port in kit.ports.items():
            wait_until(f"{proc_name} /metrics", lambda p=port: answers(
                f"http://127.0.0.1:{p}/metrics"))
        insert_events(url, [{"aggregatetype": "order", "aggregateid": f"o-{i % 4}",
                             "type": "Thing", "payload": {"n": i}} for i in range(20)])
        wait_until("events handled", lambda: kit.value("consumer",
                                                        "outbox_consumer_handled_total") >= 20)
        for proc_name in kit.ports:
            kit.exported |= exported_names(kit.metrics(proc_name))
        yield kit
    finally:
        for proc in kit.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in kit.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
        db.drop_database(pg_url, name)


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"].removeprefix("label_values(").split(",")[0])
    return exprs


def concrete(expr: str) -> str:
    """A dashboard expression as Grafana sends it with "All" selected."""
    return expr.replace("$outbox", ".*").replace("$group", ".*")


def test_rules_and_dashboard_read_only_metrics_that_exist(kit: Kit) -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    available = kit.exported | recorded | {"up"}
    for rule in rules():
        missing = metric_names(rule["expr"]) - available
        assert not missing, f"{rule.get('alert') or rule.get('record')} reads {missing}"
    for expr in dashboard_exprs():
        missing = metric_names(expr) - available
        assert not missing, f"dashboard expression {expr!r} reads {missing}"
    # The processes export what the rules were written against (a rename breaks this).
    assert {"outbox_relay_owned_shards", "outbox_consumer_lag", "outbox_cdc_slot_lag_bytes",
            "outbox_consumer_last_poll_timestamp_seconds"} <= kit.exported


def firing(prom: Prometheus, alert: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == alert
            and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())]


@pytest.mark.slow
def test_prometheus_evaluates_the_rules_and_a_stopped_relay_fires_its_alert(
        kit: Kit, tmp_path: Path) -> None:
    tool("promtool")
    scrape = [
        {"job_name": "outbox-relay", "static_configs": [
            {"targets": [f"127.0.0.1:{kit.ports['relay']}"], "labels": {"outbox": OUTBOX}}]},
        {"job_name": "outbox-consumer", "static_configs": [
            {"targets": [f"127.0.0.1:{kit.ports['consumer']}"], "labels": {"group": kit.group}}]},
        {"job_name": "outbox-cdc", "static_configs": [
            {"targets": [f"127.0.0.1:{kit.ports['exporter']}"]}]},
    ]
    (tmp_path / "rules").mkdir()
    prom = Prometheus(tmp_path, scrape, render_rules(tmp_path / "rules", "0s"))
    prom.start()
    try:
        prom.wait_for("all three targets up", lambda: len(prom.query("up == 1")) == 3)
        # Failures after Prometheus has seen the counters at 0: increase() cannot count what
        # happened before a series' first sample. Two events of a type the consumer has no
        # handler for (dead letters); a row too large for Kafka (failed for good, parked).
        prom.wait_for("counters scraped", lambda: prom.query(
            "outbox_relay_rows_parked_total == 0") and prom.query(
            "outbox_consumer_handled_total >= 20"))
        insert_events(kit.database_url, [{"aggregatetype": "order", "aggregateid": "o-9",
                                          "type": "Unknown", "payload": {"n": n}}
                                         for n in range(2)])
        insert_events(kit.database_url, [{"aggregatetype": "order", "aggregateid": "big",
                                          "payload": {"pad": os.urandom(700_000).hex()}}],
                      raw=True)
        recorded = [r["record"] for r in rules() if "record" in r]
        for record in recorded:
            if record in NEEDS_POLL_GAUGE and not prom.query(UNSET_POLL_GAUGE):
                continue
            prom.wait_for(f"recording rule {record}", lambda r=record: prom.query(r))
        for group in prom.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        owned = prom.query("outbox:relay_owned_shards:sum")
        assert [(r["metric"]["outbox"], float(r["value"][1])) for r in owned] == [(OUTBOX, 256)]
        lag = prom.query(f'outbox:consumer_lag:sum{{group="{kit.group}"}}')
        assert {r["metric"]["topic"] for r in lag} == {kit.topic}
        for expr in dashboard_exprs():
            if metric_names(expr) & NEEDS_POLL_GAUGE and not prom.query(UNSET_POLL_GAUGE):
                prom.query(concrete(expr))  # accepted, even if empty
                continue
            prom.wait_for(f"dashboard {expr!r}", lambda e=expr: prom.query(concrete(e)))
        # What happened for real: a parked row, dead letters, an idle slot, a missing connector.
        prom.wait_for("OutboxRowsParked", lambda: firing(prom, "OutboxRowsParked",
                                                         outbox=OUTBOX))
        prom.wait_for("OutboxDeadLettersGrowing", lambda: firing(
            prom, "OutboxDeadLettersGrowing", group=kit.group, reason="unknown-event-type"))
        prom.wait_for("OutboxCdcSlotInactive", lambda: firing(prom, "OutboxCdcSlotInactive"))
        prom.wait_for("OutboxCdcConnectorNotRunning", lambda: firing(
            prom, "OutboxCdcConnectorNotRunning", connector=kit.connector, state="MISSING"))
        assert not firing(prom, "OutboxRelayDown")
        assert not firing(prom, "OutboxShardsUnowned")

        relay = kit.procs["relay"]
        relay.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0, kit.log_tail()
        down = prom.wait_for("OutboxRelayDown", lambda: firing(prom, "OutboxRelayDown"))
        assert down[0]["labels"]["instance"] == f"127.0.0.1:{kit.ports['relay']}"
        assert down[0]["labels"]["severity"] == "warning"
        unowned = prom.wait_for("OutboxShardsUnowned", lambda: firing(
            prom, "OutboxShardsUnowned", outbox=OUTBOX))
        assert unowned[0]["labels"]["severity"] == "critical"
        assert not firing(prom, "OutboxConsumerDown")
    finally:
        prom.stop()
