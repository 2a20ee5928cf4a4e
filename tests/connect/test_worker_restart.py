"""A Kafka Connect worker killed and restarted loses no event (duplicates are allowed)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from connect.client import ConnectClient
from connect.config import CdcOptions, render
from outbox.publish import Event, publish
from outbox.settings import Settings
from services.launcher import free_port
from tests.connect.slots import drop_slot_when_released
from tests.harness.kafka import consume_all, wait_for_topic
from tests.test_compose import load_stack_module


@pytest.fixture
def private_worker(kafka_bootstrap: str) -> Iterator[Any]:
    """A Connect worker of our own (own group and storage topics) that we may kill."""
    stack = load_stack_module()
    worker = stack.Connect(port=free_port(), kafka_port=int(kafka_bootstrap.rsplit(":", 1)[1]),
                           name=f"connect-restart-{uuid.uuid4().hex[:6]}")
    worker.up()
    yield worker
    worker.down()


@pytest.mark.slow
def test_worker_kill_9_and_restart_loses_nothing(
        private_worker: Any, database_url: str, kafka_bootstrap: str, topic: str) -> None:
    url = private_worker.url
    name = "restart-" + uuid.uuid4().hex[:8]
    template = topic + "-{aggregatetype}"
    settings = Settings(database_url=database_url, topic_template=template)
    options = CdcOptions(name=name, password_ref="${env:OUTBOX_STACK_PG_PASSWORD}")
    client = ConnectClient(url)
    client.put_config(name, render(settings, options))
    slot = render(settings, options)["slot.name"]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(database_url) as conn:
                if conn.execute("select 1 from pg_replication_slots where slot_name = %s",
                                (slot,)).fetchone():
                    break
            time.sleep(0.5)
        ids: list[uuid.UUID] = []

        def write(n: int) -> None:
            with psycopg.connect(database_url) as conn:
                for i in range(n):
                    (ev,) = publish(conn, Event("order", f"o-{i % 5}", "Step", {"i": i}))
                    ids.append(ev.id)
                    conn.commit()

        write(40)
        wait_for_topic(kafka_bootstrap, f"{topic}-order", 60)
        os.kill(int(private_worker.pidfile.read_text()), signal.SIGKILL)
        write(40)  # committed while no worker runs: must not be lost
        # Gone before it is started again: up() took the dying worker, still answering on
        # its port, for "already running" (it then died; in CI, 2026-12-02).
        stack = load_stack_module()
        deadline = time.monotonic() + 30
        while stack.port_open(private_worker.port):
            assert time.monotonic() < deadline, "the killed worker still listens"
            time.sleep(0.05)
        private_worker.up()
        records = consume_all(kafka_bootstrap, f"{topic}-order", expected=80, timeout=120,
                              idle=2)
        seen = {uuid.UUID((r.header("id") or b"").decode()) for r in records}
        assert set(ids) <= seen, f"{len(set(ids) - seen)} events lost"
    finally:
        client.delete(name)
        drop_slot_when_released(database_url, slot)
