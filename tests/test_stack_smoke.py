"""The local stack is real: PostgreSQL, Kafka and Kafka Connect with Debezium answer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.harness.kafka import consume_all, create_topic, produce
from tests.harness.stack import ROOT


def test_row_round_trips_through_postgres(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("create table smoke (id uuid primary key, body jsonb not null)")
        row_id = uuid.uuid4()
        conn.execute("insert into smoke values (%s, %s)", (row_id, json.dumps({"a": 1})))
        conn.commit()
    with psycopg.connect(database_url) as conn:
        got = conn.execute("select id, body from smoke").fetchall()
    assert got == [(row_id, {"a": 1})]


def test_each_test_gets_its_own_database(database_url: str, pg_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        name = conn.execute("select current_database()").fetchone()
    with psycopg.connect(pg_url) as conn:
        main = conn.execute("select current_database()").fetchone()
    assert name is not None and main is not None
    assert name != main


def test_logical_replication_slot_can_be_created_and_dropped(database_url: str) -> None:
    slot = f"smoke_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        level = conn.execute("show wal_level").fetchone()
        assert level == ("logical",)
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            slots = conn.execute(
                "select plugin, slot_type from pg_replication_slots where slot_name = %s",
                (slot,)).fetchall()
            assert slots == [("pgoutput", "logical")]
        finally:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))


def test_message_round_trips_through_kafka_with_key_and_headers(
        kafka_bootstrap: str, topic: str) -> None:
    create_topic(kafka_bootstrap, topic, partitions=3)
    produce(kafka_bootstrap, topic, [
        (b"order-1", b'{"n":1}', [("id", b"e1"), ("eventType", b"OrderCreated")]),
        (b"order-1", b'{"n":2}', [("id", b"e2")]),
    ])
    records = consume_all(kafka_bootstrap, topic, expected=2, idle=0.5)
    assert [(r.key, r.value) for r in records] == [(b"order-1", b'{"n":1}'),
                                                   (b"order-1", b'{"n":2}')]
    assert records[0].headers == [("id", b"e1"), ("eventType", b"OrderCreated")]
    assert records[0].partition == records[1].partition


def test_connect_lists_debezium_postgres_connector_and_event_router(connect_url: str) -> None:
    with urllib.request.urlopen(
            connect_url + "/connector-plugins?connectorsOnly=false", timeout=10) as resp:
        plugins = {p["class"]: p for p in json.loads(resp.read())}
    assert "io.debezium.connector.postgresql.PostgresConnector" in plugins
    assert plugins["io.debezium.connector.postgresql.PostgresConnector"]["version"].startswith("3.")
    assert "io.debezium.transforms.outbox.EventRouter" in plugins
    # The router really loads: Connect instantiates it to describe its configuration.
    with urllib.request.urlopen(
            connect_url + "/connector-plugins/io.debezium.transforms.outbox.EventRouter/config",
            timeout=10) as resp:
        config_names = {c["name"] for c in json.loads(resp.read())}
    assert "route.topic.replacement" in config_names


def test_stack_up_is_idempotent_and_status_is_healthy() -> None:
    up = subprocess.run([sys.executable, str(ROOT / "devstack" / "stack.py"), "up"],
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    for service in ("postgres", "kafka", "connect"):
        assert f"{service} already running" in up.stdout
    status = subprocess.run([sys.executable, str(ROOT / "devstack" / "stack.py"), "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 3


def test_kafka_cluster_ids_never_start_with_a_dash() -> None:
    """kafka-storage reads `-t -abc…` as an option: one fresh machine in 64 failed to start."""
    from tests.test_compose import load_stack_module

    stack = load_stack_module()
    ids = [stack.kafka_uuid() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _private_postgres(home: Path, port: int, action: str, fast: bool = False) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_STACK_FAST"}
    env.update(OUTBOX_STACK_DIR=str(home), OUTBOX_STACK_PG_PORT=str(port))
    if fast:
        env["OUTBOX_STACK_FAST"] = "1"
    done = subprocess.run([sys.executable, str(ROOT / "devstack" / "stack.py"), action,
                           "postgres"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _commit_settings(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(
            "select name, setting from pg_settings where name in "
            "('fsync', 'synchronous_commit', 'full_page_writes')").fetchall())


@pytest.mark.slow
def test_the_default_stack_commits_durably_and_fast_mode_is_an_opt_in() -> None:
    """A private cluster started the default way: every commit is flushed, so an immediate
    (crash) stop right after the last of 300 one-row commits loses none of them. With
    OUTBOX_STACK_FAST=1 the same stack runs without fsync and synchronous commits."""
    # Under /tmp: the unprivileged server must traverse every parent directory.
    home = Path(tempfile.mkdtemp(prefix="outbox-durable-", dir="/tmp"))
    home.chmod(0o755)
    port = _free_port()
    url = f"postgresql://outbox:outbox@127.0.0.1:{port}/outbox"
    try:
        _private_postgres(home, port, "up")
        assert _commit_settings(url) == {"fsync": "on", "synchronous_commit": "on",
                                         "full_page_writes": "on"}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create table orders (n int primary key)")
            for n in range(300):
                conn.execute("insert into orders values (%s)", (n,))  # each its own commit
        postmaster = int((home / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGQUIT)  # immediate shutdown: crash recovery at start
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{postmaster}").exists():
            time.sleep(0.1)
        _private_postgres(home, port, "up")
        with psycopg.connect(url) as conn:
            assert conn.execute("select count(*) from orders").fetchone() == (300,)
        _private_postgres(home, port, "down")
        _private_postgres(home, port, "up", fast=True)
        assert _commit_settings(url) == {"fsync": "off", "synchronous_commit": "off",
                                         "full_page_writes": "off"}
    finally:
        _private_postgres(home, port, "down")
        shutil.rmtree(home, ignore_errors=True)
