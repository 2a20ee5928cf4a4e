"""examples/typescript on the machine's Node, against the real stack.

- placeOrder.ts publishes with the SQL function in its order's transaction; a Python
  consumer of the toolkit receives the events through the relay.
- inventoryConsumer.ts (KafkaJS + pg) applies each event once: a crash between its
  database commit and its offset commit, and a replay of every event, add no effect.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.orm import Session

from consumers import IncomingEvent
from outbox.cli import main
from outbox.publish import Event, publish
from outbox.settings import Settings
from tests.consumers.app import Running, build
from tests.harness.kafka import create_topic
from tests.harness.running import relay_thread

Poll = Callable[[], bool]


def wait_for(condition: Poll, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
    return int(row[0]) if row else 0


@pytest.fixture
def example_db(database_url: str, ts_examples: Path) -> str:
    with psycopg.connect(database_url) as conn:
        conn.execute((ts_examples / "schema.sql").read_bytes())
    return database_url


@pytest.fixture
def relay_running(example_db: str, kafka_bootstrap: str, topic: str) -> Iterator[Settings]:
    settings = Settings(database_url=example_db, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=topic + "-{aggregatetype}")
    for aggregate in ("order", "inventory"):
        create_topic(kafka_bootstrap, f"{topic}-{aggregate}", partitions=3)
    with relay_thread(settings, poll_interval=0.1):
        yield settings


def node(ts_examples: Path, script: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["node", str(ts_examples / "dist" / script), *args],
                            env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_typescript_orders_reach_a_python_consumer(
        ts_examples: Path, example_db: str, relay_running: Settings, topic: str) -> None:
    placed = subprocess.run(["node", str(ts_examples / "dist" / "placeOrder.js"), "o-1", "o-2",
                             "o-3"], env={**os.environ, "DATABASE_URL": example_db},
                            capture_output=True, text=True, timeout=60)
    assert placed.returncode == 0, placed.stderr
    event_ids = [json.loads(line)["eventId"] for line in placed.stdout.splitlines()]
    assert len(event_ids) == 3
    assert count(example_db, "select count(*) from orders") == 3

    received: list[IncomingEvent] = []

    def handler(session: Session, event: IncomingEvent) -> None:
        session.execute(text("select 1"))
        received.append(event)

    app = build(example_db, relay_running.kafka_bootstrap_servers, f"{topic}-order",
                "python-inventory", handler=handler, fallback=True)
    running = Running(app)
    try:
        wait_for(lambda: len(received) >= 3, "the Python consumer to get 3 events")
    finally:
        running.stop()
    assert sorted(str(e.id) for e in received) == sorted(event_ids)
    first = next(e for e in received if e.key == "o-1")
    assert first.type == "OrderCreated"
    assert first.payload["orderId"] == "o-1"
    assert first.payload["total"] == "42.50"
    assert first.payload["items"] == [{"sku": "sku-1", "quantity": 2}]
    assert first.correlation_id == first.payload["correlationId"]


def test_a_failed_publish_rolls_the_order_back(ts_examples: Path, example_db: str) -> None:
    placed = subprocess.run(["node", str(ts_examples / "dist" / "placeOrder.js"), "x" * 300],
                            env={**os.environ, "DATABASE_URL": example_db},
                            capture_output=True, text=True, timeout=60)
    assert placed.returncode == 1
    assert "outbox event field 'aggregate_id': is 300 characters long" in placed.stderr
    assert count(example_db, "select count(*) from orders") == 0


def test_the_inbox_consumer_survives_a_crash_and_a_replay_without_a_second_effect(
        ts_examples: Path, example_db: str, relay_running: Settings, topic: str) -> None:
    with psycopg.connect(example_db) as conn:
        for n in range(3):
            publish(conn, Event("order", f"o-{n}", "OrderCreated",
                                {"eventType": "OrderCreated", "orderId": f"o-{n}"}),
                    settings=relay_running)
            conn.commit()
    env: dict[str, Any] = {"DATABASE_URL": example_db,
                           "KAFKA_BROKERS": relay_running.kafka_bootstrap_servers,
                           "TOPIC": f"{topic}-order", "GROUP_ID": "ts-inventory"}
    reservations = "select count(*) from inventory_reservations"

    # 1. Crash right after the first database commit, before KafkaJS commits the offset.
    crashed = node(ts_examples, "inventoryConsumer.js", **env, CRASH_AFTER_COMMITS="1")
    _out, err = crashed.communicate(timeout=90)
    assert crashed.returncode == 99, err
    assert count(example_db, reservations) == 1

    # 2. Restarted: the first event comes again and is a duplicate; the rest are applied.
    proc = node(ts_examples, "inventoryConsumer.js", **env)
    try:
        wait_for(lambda: count(example_db, reservations) == 3, "3 reservations", timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"duplicate"' in out  # the event whose offset the crash left uncommitted
    assert count(example_db, "select count(*) from inbox where consumer_group = 'ts-inventory'"
                 ) == 3

    # 3. Every event again, with its original id (outbox replay): all duplicates.
    result = CliRunner().invoke(main, ["replay", "--aggregate-type", "order", "--yes"], env={
        "OUTBOX_DATABASE_URL": example_db,
        "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": relay_running.kafka_bootstrap_servers,
        "OUTBOX_TOPIC_TEMPLATE": relay_running.topic_template})
    assert result.exit_code == 0, result.output
    seen: list[str] = []

    def duplicates() -> bool:
        return count(example_db, "select count(*) from inbox") >= 3 and len(seen) >= 3

    proc = node(ts_examples, "inventoryConsumer.js", **env)
    assert proc.stdout is not None

    def read_lines() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"duplicate"' in line:
                seen.append(json.loads(line)["duplicate"])

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        wait_for(duplicates, "3 duplicates skipped", timeout=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        reader.join(10)
    assert count(example_db, reservations) == 3
    # Each applied event published InventoryReserved in the same transaction, once.
    assert count(example_db, "select count(*) from outbox where type = 'InventoryReserved'"
                 ) == 3
