"""``outbox connect exporter`` against the real PostgreSQL slot and the real Kafka Connect."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connect.client import ConnectClient
from connect.config import CdcOptions, render
from connect.exporter import ConnectorStatus, Slot, Snapshot, families, read_snapshot
from outbox.cli import main
from outbox.settings import Settings
from services.launcher import free_port
from tests.connect.slots import drop_slot_when_released
from tests.harness.connect import PASSWORD_REF, wait_running
from tests.relay.conftest import OUTBOX_BIN, ensure_outbox

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


class Exporter:
    """``outbox connect exporter`` as a process on a free port."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(OUTBOX_BIN), "connect", "exporter", "--port", str(self.port), *args],
            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                httpx.get(self.url + "/health", timeout=10)
                return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "exporter not listening after 30 s"
                time.sleep(0.2)

    def scrape(self) -> Samples:
        response = httpx.get(self.url + "/metrics", timeout=15)
        assert response.status_code == 200
        return samples(response.text)

    def until(self, what: str, check: Any, timeout: float = 60) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            found = self.scrape()
            if check(found):
                return found
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s: {found}"
            time.sleep(0.5)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode()


@pytest.fixture
def connector(database_url: str, kafka_bootstrap: str, connect_url: str,
              topic: str) -> Iterator[dict[str, Any]]:
    """A Debezium connector on this test's database; removed with its slot afterwards."""
    ensure_outbox(database_url)
    name = "x-" + uuid.uuid4().hex[:10]
    env = {"OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_CONNECT_URL": connect_url, "OUTBOX_TOPIC_TEMPLATE": topic + "-{aggregatetype}"}
    slot = render(Settings(database_url=database_url), CdcOptions(name=name))["slot.name"]
    result = CliRunner().invoke(main, ["connect", "apply", "--name", name, "--password-ref",
                                       PASSWORD_REF], env=env)
    assert result.exit_code == 0, result.output
    try:
        yield {"name": name, "slot": slot, "env": env}
    finally:
        ConnectClient(connect_url).delete(name)
        drop_slot_when_released(database_url, slot)


@pytest.mark.connect
@pytest.mark.slow
def test_exporter_reports_the_real_slot_and_connector_through_their_life(
        connector: dict[str, Any], database_url: str, connect_url: str) -> None:
    name, slot = connector["name"], connector["slot"]
    wait_running(connect_url, name)
    exporter = Exporter(connector["env"], "--name", name, "--log-format", "text")
    try:
        found = exporter.until("the slot streaming", lambda s: sample(
            s, "outbox_cdc_slot_active", slot=slot) == 1.0)
        assert sample(found, "outbox_cdc_up", source="postgres") == 1.0
        assert sample(found, "outbox_cdc_up", source="connect") == 1.0
        assert sample(found, "outbox_cdc_connector_state", connector=name, state="RUNNING") == 1
        assert sample(found, "outbox_cdc_connector_state", connector=name, state="FAILED") == 0
        assert sample(found, "outbox_cdc_connector_tasks", connector=name, state="RUNNING") == 1
        assert sample(found, "outbox_cdc_connector_slot_exists", connector=name, slot=slot) == 1
        lag = sample(found, "outbox_cdc_slot_lag_bytes", slot=slot)
        retained = sample(found, "outbox_cdc_slot_retained_bytes", slot=slot)
        assert lag is not None and lag >= 0
        assert retained is not None and retained >= lag
        health = httpx.get(exporter.url + "/health", timeout=15)
        assert health.status_code == 200
        assert health.json()["connectors"] == {name: "RUNNING"}
        # Without --name: the Debezium connectors streaming this database.
        settings = Settings(database_url=database_url, connect_url=connect_url)
        snap = read_snapshot(settings, ConnectClient(connect_url), [])
        assert [c.name for c in snap.connectors] == [name]

        ConnectClient(connect_url).pause(name)
        exporter.until("the connector paused", lambda s: sample(
            s, "outbox_cdc_connector_state", connector=name, state="PAUSED") == 1.0)
        # Deleted, the connector leaves its slot behind, idle: what pins WAL for good.
        ConnectClient(connect_url).delete(name)
        found = exporter.until("the slot idle", lambda s: sample(
            s, "outbox_cdc_slot_active", slot=slot) == 0.0 and sample(
            s, "outbox_cdc_connector_state", connector=name, state="MISSING") == 1.0, 90)
        assert sample(found, "outbox_cdc_connector_slot_exists", connector=name, slot=slot) == 1
        assert sample(found, "outbox_cdc_connector_tasks", connector=name, state="RUNNING") == 0
        drop_slot_when_released(database_url, slot)
        found = exporter.until("the slot gone", lambda s: sample(
            s, "outbox_cdc_slot_active", slot=slot) is None)
        assert sample(found, "outbox_cdc_connector_slot_exists", connector=name, slot=slot) == 0
        assert exporter.stop() == 0
    finally:
        if exporter.proc.poll() is None:
            exporter.proc.kill()


def closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there; make sure of it
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_exporter_reports_sources_it_cannot_read_without_a_secret() -> None:
    secret = "hunter2-" + uuid.uuid4().hex[:6]
    env = {"OUTBOX_DATABASE_URL": f"postgresql://app:{secret}@127.0.0.1:{closed_port()}/shop",
           "OUTBOX_CONNECT_URL": f"http://127.0.0.1:{closed_port()}"}
    exporter = Exporter(env, "--name", "orders-cdc", "--timeout", "2")
    try:
        found = exporter.scrape()
        assert sample(found, "outbox_cdc_up", source="postgres") == 0.0
        assert sample(found, "outbox_cdc_up", source="connect") == 0.0
        # Not read is not missing: no slot and no "slot exists 0" is claimed.
        assert not [k for k in found if k[0].startswith("outbox_cdc_slot")]
        assert not [k for k in found if k[0] == "outbox_cdc_connector_slot_exists"]
        health = httpx.get(exporter.url + "/health", timeout=15)
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unhealthy"
        assert "connection" in body["postgres"].lower() or "refused" in body["postgres"].lower()
        assert "not reachable" in body["connect"]
        assert secret not in health.text
        assert exporter.stop() == 0
        assert secret not in exporter.output()
    finally:
        if exporter.proc.poll() is None:
            exporter.proc.kill()


@pytest.mark.postgres
def test_exporter_rejects_bad_configuration_in_one_line(pg_url: str) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(OUTBOX_BIN), "connect", "exporter", "--port",
                               str(free_port()), *args], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)

    wrong = pg_url.replace("outbox:outbox@", "outbox:not-the-password@")
    assert wrong != pg_url
    for code, result in ((3, run(OUTBOX_DATABASE_URL="mysql://app@db/shop")),
                         (3, run(OUTBOX_DATABASE_URL=wrong)),
                         (2, run("--log-level", "loud", OUTBOX_DATABASE_URL=pg_url))):
        assert result.returncode == code, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "not-the-password" not in result.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        result = run("--port", str(busy.getsockname()[1]), OUTBOX_DATABASE_URL=pg_url)
    finally:
        busy.close()
    assert result.returncode == 3, result.stderr
    assert "cannot listen on" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_families_of_a_snapshot() -> None:
    """The exported series, from a snapshot built by hand (pure)."""
    snap = Snapshot(slots=[Slot("s1", True, 10, 20), Slot("s2", False, None, None)],
                    connectors=[ConnectorStatus("c1", "s1", "RUNNING", ("RUNNING", "FAILED")),
                                ConnectorStatus("c2", "s9", "MISSING")],
                    connect_error="boom", seconds={"postgres": 0.1, "connect": 0.2})
    registry = CollectorRegistry()

    class Fixed:
        def collect(self) -> Any:
            return families(snap)

    registry.register(Fixed())
    found = samples(generate_latest(registry).decode())
    assert sample(found, "outbox_cdc_up", source="postgres") == 1.0
    assert sample(found, "outbox_cdc_up", source="connect") == 0.0
    assert sample(found, "outbox_cdc_slot_lag_bytes", slot="s1") == 10
    assert sample(found, "outbox_cdc_slot_retained_bytes", slot="s1") == 20
    assert sample(found, "outbox_cdc_slot_lag_bytes", slot="s2") is None
    assert sample(found, "outbox_cdc_slot_active", slot="s2") == 0
    assert sample(found, "outbox_cdc_connector_slot_exists", connector="c1", slot="s1") == 1
    assert sample(found, "outbox_cdc_connector_slot_exists", connector="c2", slot="s9") == 0
    assert sample(found, "outbox_cdc_connector_state", connector="c2", state="MISSING") == 1
    assert sample(found, "outbox_cdc_connector_state", connector="c2", state="RUNNING") == 0
    assert sample(found, "outbox_cdc_connector_tasks", connector="c1", state="FAILED") == 1
    assert sample(found, "outbox_cdc_connector_tasks", connector="c2", state="RUNNING") == 0
