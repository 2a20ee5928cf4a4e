"""`outbox db roles --sql`: each daemon runs as its least-privilege role, against the real
database and broker (docs/operations.md)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from connect.client import ConnectClient
from connect.config import slot_name
from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.cli import main
from outbox.exit_codes import EXIT_CONFIG
from outbox.publish import Event, publish
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions
from tests.connect.slots import drop_slot_when_released
from tests.harness import db
from tests.harness.kafka import consume_all, wait_for_topic

SCHEMA = "Billing"  # mixed case on purpose: the roles' SQL quotes it like everything else
PASSWORD = "role-test-password"  # a throwaway role of this test
# Kafka Connect (devstack) knows this password as ${env:OUTBOX_DATABASE_PASSWORD}.
CONNECT_PASSWORD = "outbox"


@dataclass
class Roles:
    """A database with the toolkit installed by its migrations role, and a login per role."""

    admin: str  # superuser URL of the test database
    prefix: str
    urls: dict[str, str]
    connector: str

    def settings(self, role: str, **extra: Any) -> Settings:
        return Settings(database_url=self.urls[role], db_schema=SCHEMA, **extra)


def _login(url: str, user: str, password: str) -> str:
    host = url.split("@", 1)[1]
    return f"postgresql://{user}:{password}@{host}"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def roles(pg_url: str) -> Iterator[Roles]:
    name = f"t_roles_{uuid.uuid4().hex[:10]}"
    prefix = f"r{uuid.uuid4().hex[:8]}"
    connector = f"t-{prefix}"
    with db.admin_connect(pg_url) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    admin = db.with_dbname(pg_url, name)
    logins = {"writer": f"{prefix}_app", "relay": f"{prefix}_relay_login",
              "consumer": f"{prefix}_worker"}
    try:
        # Step 1, as the DBA: what the toolkit prints.
        printed = _cli("db", "roles", "--sql", "--step", "roles", "--role-prefix", prefix,
                       "--schema", SCHEMA, "--connector-name", connector,
                       "--database-url", admin)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(printed.encode())
            for kind, login in logins.items():
                conn.execute(f"create role {login} login password '{PASSWORD}' "
                             f"in role {prefix}_{kind}")
            conn.execute(f"alter role {prefix}_migrator password '{PASSWORD}'")
            conn.execute(f"alter role {prefix}_cdc password '{CONNECT_PASSWORD}'")
        urls = {kind: _login(admin, login, PASSWORD) for kind, login in logins.items()}
        urls["migrator"] = _login(admin, f"{prefix}_migrator", PASSWORD)
        urls["cdc"] = _login(admin, f"{prefix}_cdc", CONNECT_PASSWORD)
        # The migrations role installs the tables, then grants on them (step 2).
        _cli("db", "upgrade", "--schema", SCHEMA, "--database-url", urls["migrator"])
        _cli("relay", "install-notify", "--schema", SCHEMA, "--database-url", urls["migrator"])
        grants = _cli("db", "roles", "--sql", "--step", "grants", "--role-prefix", prefix,
                      "--schema", SCHEMA, "--connector-name", connector,
                      "--database-url", admin)
        with psycopg.connect(urls["migrator"], autocommit=True) as conn:
            conn.execute(grants.encode())
        publication = _cli("db", "roles", "--sql", "--step", "publication", "--role-prefix",
                           prefix, "--schema", SCHEMA, "--connector-name", connector,
                           "--database-url", admin)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(publication.encode())
        yield Roles(admin, prefix, urls, connector)
    finally:
        db.drop_database(pg_url, name)
        with db.admin_connect(pg_url) as conn:
            for role in [*logins.values(), *(f"{prefix}_{k}" for k in
                                             ("migrator", "writer", "relay", "consumer", "cdc"))]:
                conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def _denied(url: str, statement: str) -> bool:
    with psycopg.connect(url) as conn:
        try:
            conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def _events(n: int, tag: str) -> list[Event]:
    return [Event("invoice", f"inv-{i % 3}", "InvoiceIssued", {"n": i, "tag": tag})
            for i in range(n)]


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f'select count(*) from "{SCHEMA}".{table}').fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.postgres
@pytest.mark.kafka
def test_writer_relay_and_consumer_each_work_as_their_role_and_no_more(
        roles: Roles, kafka_bootstrap: str, topic: str) -> None:
    outbox = f'"{SCHEMA}".outbox'
    # A writer publishes (publish(), and the SQL function any language and capture
    # triggers call), and can do nothing else with the outbox or the inbox.
    with psycopg.connect(roles.urls["writer"]) as conn:
        publish(conn, *_events(5, "written"), settings=roles.settings("writer"))
        conn.execute(f"select {outbox[:-len('.outbox')]}.outbox_publish('invoice', 'inv-9', "
                     """'InvoiceIssued', '{"n": 5, "tag": "written"}'::jsonb)""")
    for statement in (f"select * from {outbox}", f"update {outbox} set attempts = 1",
                      f"delete from {outbox}", f'select * from "{SCHEMA}".inbox',
                      f'select * from "{SCHEMA}".outbox_relay_cursor'):
        assert _denied(roles.urls["writer"], statement), statement
    refused = CliRunner().invoke(main, ["status", "--schema", SCHEMA, "--database-url",
                                        roles.urls["writer"]])
    assert refused.exit_code == EXIT_CONFIG, refused.output
    assert "outbox db roles --sql" in refused.output

    # The relay delivers as the relay role; status and purge work as it too.
    template = topic + "-{aggregatetype}"
    relay_settings = roles.settings("relay", kafka_bootstrap_servers=kafka_bootstrap,
                                    topic_template=template)
    relay = Relay(relay_settings, RelayOptions(poll_interval=0.2, rebalance_interval=0.5))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(relay.run()), daemon=True)
    thread.start()
    try:
        wait_for_topic(kafka_bootstrap, topic + "-invoice", 60)
        records = consume_all(kafka_bootstrap, topic + "-invoice", expected=6, timeout=60,
                              idle=0.5)
        assert sorted(r.value or b"" for r in records) == sorted(
            f'{{"n":{i},"tag":"written"}}'.encode() for i in range(6))
        status = _cli("status", "--json", "--schema", SCHEMA, "--database-url",
                      roles.urls["relay"])
        assert '"backlog": 0' in status

        # A consumer consumes as the consumer role: inbox rows, and the events its handler
        # publishes in the same transaction (a consumer is a writer).
        def handle(session: Session, event: IncomingEvent) -> None:
            publish(session, Event("receipt", str(event.key), "ReceiptSent",
                                   {"for": str(event.id)}), settings=roles.settings("consumer"))

        engine = create_engine(roles.settings("consumer").sqlalchemy_url(), pool_size=2)
        consumer = Consumer(roles.settings("consumer", kafka_bootstrap_servers=kafka_bootstrap),
                            f"{roles.prefix}-group", engine=engine, options=ConsumerOptions(
                                poll_timeout=0.2, backoff_base=0.05, backoff_cap=0.2))
        consumer.add_handler(topic + "-invoice", "InvoiceIssued", handle)
        running = threading.Thread(target=consumer.run, daemon=True)
        running.start()
        try:
            deadline = time.monotonic() + 60
            while _count(roles.admin, "inbox") < 6 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _count(roles.admin, "inbox") == 6
            receipts = consume_all(kafka_bootstrap, topic + "-receipt", expected=6,
                                   timeout=60, idle=0.5)
            assert len({r.header("id") for r in receipts}) == 6  # relayed, as the relay role
        finally:
            consumer.request_stop()
            running.join(30)
            engine.dispose()
        for statement in (f"select * from {outbox}", f"delete from {outbox}",
                          f"update {outbox} set failed_at = now()"):
            assert _denied(roles.urls["consumer"], statement), statement
        _cli("inbox", "purge", "--older-than", "0", "--schema", SCHEMA, "--database-url",
             roles.urls["consumer"])
        assert _count(roles.admin, "inbox") == 0
    finally:
        relay.request_stop()
        thread.join(30)
    assert result == [0]
    purged = _cli("purge", "--older-than", "0", "--schema", SCHEMA, "--database-url",
                  roles.urls["relay"])
    assert "purged 12 published rows" in purged
    # The relay cannot change what writers wrote, nor touch consumers' rows.
    for statement in (f"update {outbox} set payload = null", f'delete from "{SCHEMA}".inbox',
                      f"insert into {outbox} (id, aggregatetype, aggregateid, type) "
                      "values (gen_random_uuid(), 'a', 'b', 'c')"):
        assert _denied(roles.urls["relay"], statement), statement


@pytest.mark.postgres
@pytest.mark.kafka
@pytest.mark.connect
def test_debezium_streams_the_outbox_as_the_cdc_role(
        roles: Roles, kafka_bootstrap: str, connect_url: str, topic: str) -> None:
    template = topic + "-cdc-{aggregatetype}"
    common = ["--schema", SCHEMA, "--database-url", roles.urls["cdc"], "--connect-url",
              connect_url, "--topic-template", template, "--name", roles.connector,
              "--password-ref", "${env:OUTBOX_DATABASE_PASSWORD}"]
    checked = CliRunner().invoke(main, ["connect", "check", *common])
    # Only the slot is missing before the connector runs: the role and publication are right.
    assert "lacks the REPLICATION attribute" not in checked.output, checked.output
    assert "does not cover" not in checked.output, checked.output
    assert "does not exist yet" in checked.output, checked.output
    client = ConnectClient(connect_url)
    try:
        _cli("connect", "apply", *common)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = client.status(roles.connector)
            if state and state["connector"]["state"] == "RUNNING" and state["tasks"] and all(
                    t["state"] == "RUNNING" for t in state["tasks"]):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"connector not running: {client.status(roles.connector)}")
        with psycopg.connect(roles.urls["writer"]) as conn:
            publish(conn, *_events(4, "captured"), settings=roles.settings("writer"))
        wait_for_topic(kafka_bootstrap, topic + "-cdc-invoice", 90)
        records = consume_all(kafka_bootstrap, topic + "-cdc-invoice", expected=4,
                              timeout=60, idle=0.5)
        assert len(records) == 4
    finally:
        client.delete(roles.connector)
        drop_slot_when_released(roles.admin, slot_name(roles.connector))
