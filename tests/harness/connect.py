"""Debezium on the local Kafka Connect in tests: a connector on the test's database (the
``cdc`` fixture), applied until it streams, events published for it, its records read and
compared with the relay's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from connect.client import ConnectClient
from connect.config import CdcOptions, render
from outbox.cli import main
from outbox.publish import Event, publish
from outbox.settings import Settings
from tests.connect.slots import drop_slot_when_released
from tests.harness.kafka import Record, consume_all, wait_for_topic

# The running dev worker has this variable in its environment (devstack/stack.py).
PASSWORD_REF = "${env:OUTBOX_STACK_PG_PASSWORD}"


@pytest.fixture
def cdc(database_url: str, kafka_bootstrap: str, connect_url: str,
        topic: str) -> Iterator[dict[str, Any]]:
    """A connector on this test's database, removed (with its slot) afterwards."""
    name = "t-" + uuid.uuid4().hex[:10]
    template = topic + "-cdc-{aggregatetype}"
    env = {"OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_CONNECT_URL": connect_url, "OUTBOX_TOPIC_TEMPLATE": template}
    args = ["--name", name, "--password-ref", PASSWORD_REF]
    yield {"name": name, "template": template, "env": env, "args": args,
           "settings": Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                                connect_url=connect_url, topic_template=template)}
    ConnectClient(connect_url).delete(name)
    slot = render(Settings(database_url=database_url), CdcOptions(name=name))["slot.name"]
    drop_slot_when_released(database_url, slot)


def wait_running(connect_url: str, name: str, timeout: float = 60) -> None:
    """Wait until connector ``name`` and all its tasks are RUNNING."""
    client = ConnectClient(connect_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status(name)
        if status and status["connector"]["state"] == "RUNNING" and status["tasks"] and all(
                t["state"] == "RUNNING" for t in status["tasks"]):
            return
        time.sleep(0.5)
    raise AssertionError(f"connector {name} not running: {client.status(name)}")


def wait_streaming(connect_url: str, name: str) -> None:
    """Wait until connector ``name`` runs and has had time to start streaming."""
    wait_running(connect_url, name)
    time.sleep(2)  # the slot is created as the task starts streaming


def apply_connector(cdc: dict[str, Any], env: dict[str, str] | None = None) -> None:
    """``outbox connect apply`` for the ``cdc`` fixture's connector (with ``env`` instead of
    its own environment if given), then wait until it streams."""
    result = CliRunner().invoke(main, ["connect", "apply", *cdc["args"]],
                                env=cdc["env"] if env is None else env)
    assert result.exit_code == 0, result.output
    wait_streaming(cdc["env"]["OUTBOX_CONNECT_URL"], cdc["name"])


def publish_each(url: str, events: list[Event]) -> None:
    """Publish ``events`` in order, one transaction each."""
    with psycopg.connect(url) as conn:
        for event in events:
            publish(conn, event)
            conn.commit()


def read(bootstrap: str, topic: str, n: int) -> list[Record]:
    """The records of ``topic`` once it exists: ``n`` of them, or what came in 60 s."""
    wait_for_topic(bootstrap, topic, 60)
    return consume_all(bootstrap, topic, expected=n, timeout=60, idle=1)


def comparable(records: list[Record], prefix: str) -> list[tuple[Any, ...]]:
    """(topic suffix, partition, key, value, headers with a value) in arrival order."""
    return [(r.topic[len(prefix):], r.partition, r.key, r.value,
             [(k, v) for k, v in r.headers if v is not None]) for r in records]


def by_key(records: list[tuple[Any, ...]]) -> dict[bytes, list[tuple[Any, ...]]]:
    """:func:`comparable` records grouped by key, each key's in arrival order."""
    out: dict[bytes, list[tuple[Any, ...]]] = {}
    for rec in records:
        out.setdefault(rec[2], []).append(rec)
    return out
