"""A mixed-case or reserved-word schema (`Billing`, `user`) works end to end: one rule,
every configured name is written quoted (outbox.settings.quote_ident / qualified).

Before, `db upgrade` and publish() accepted such a schema, then the relay, `status` and
`install-notify` could not find the table, and `db check` of a second installation
counted the first one's tables as drift (`remove_table outbox`).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.cli import main
from outbox.publish import Event, publish
from outbox.settings import Settings
from tests.harness.kafka import consume_all, wait_for_topic
from tests.relay.conftest import ThreadRelay

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result.output


def publish_events(settings: Settings, tag: str, n: int) -> None:
    engine = create_engine(settings.sqlalchemy_url())
    with Session(engine) as session, session.begin():
        publish(session, *[Event("invoice", f"inv-{i % 2}", "InvoiceIssued",
                                 {"n": i, "tag": tag}) for i in range(n)], settings=settings)
    engine.dispose()


def wait_listening(url: str, instance: str, timeout: float = 20) -> None:
    """The relay's LISTEN session is up (NOTIFY sent before it would be lost)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("select count(*) from pg_stat_activity where application_name "
                               "= %s and query like 'listen %%'",
                               (f"outbox-relay-listen:{instance}",)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.1)
    raise AssertionError("the relay never listened")


@pytest.mark.parametrize("schema", ["Billing", "user"])
def test_a_mixed_case_or_reserved_schema_works_end_to_end(
        database_url: str, kafka_bootstrap: str, prefix: str, schema: str) -> None:
    # The template database has the toolkit in `public` already: a second installation.
    names = ["--database-url", database_url, "--schema", schema]
    cli("db", "upgrade", *names)
    assert cli("db", "check", *names).startswith(f"ok: {schema}.outbox and {schema}.inbox")
    assert cli("db", "check", "--database-url", database_url).startswith("ok: public.outbox")
    notify = cli("relay", "install-notify", *names)
    assert f"installed on {schema}.outbox (channel outbox_{schema}_outbox)" in notify

    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        db_schema=schema, topic_template=prefix + "-{aggregatetype}")
    publish_events(settings, "before", 4)
    status = json.loads(cli("status", "--json", *names))
    assert (status["table"], status["backlog"]) == (f"{schema}.outbox", 4)

    from relay.loop import Relay, RelayOptions

    # Polling every minute: what arrives sooner was woken by NOTIFY on the quoted channel.
    relay = Relay(settings, RelayOptions(poll_interval=60, rebalance_interval=0.5))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(relay.run()), daemon=True)
    thread.start()
    handle = ThreadRelay(relay, thread, result)
    try:
        topic = prefix + "-invoice"
        wait_for_topic(kafka_bootstrap, topic, 60)
        assert len(consume_all(kafka_bootstrap, topic, expected=4, timeout=60, idle=0.2)) == 4
        wait_listening(database_url, relay.options.instance_id)
        woken_at = time.monotonic()
        publish_events(settings, "after", 2)
        records = consume_all(kafka_bootstrap, topic, expected=6, timeout=30, idle=0.2)
        assert len(records) == 6
        assert time.monotonic() - woken_at < 30, "delivered by the poll, not by NOTIFY"
        deadline = time.monotonic() + 20
        while json.loads(cli("status", "--json", *names))["backlog"] and (
                time.monotonic() < deadline):
            time.sleep(0.2)
        assert json.loads(cli("status", "--json", *names))["shards_owned"] == 256

        # A consumer's inbox in the same schema.
        seen: list[Any] = []

        def handle_event(session: Session, event: IncomingEvent) -> None:
            seen.append(event.id)

        engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
        consumer = Consumer(settings, f"{prefix}-group", engine=engine,
                            options=ConsumerOptions(poll_timeout=0.2))
        consumer.add_handler(topic, "InvoiceIssued", handle_event)
        running = threading.Thread(target=consumer.run, daemon=True)
        running.start()
        try:
            deadline = time.monotonic() + 60
            while len(set(seen)) < 6 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            consumer.request_stop()
            running.join(30)
            engine.dispose()
        assert len(set(seen)) == 6
        with psycopg.connect(database_url) as conn:
            inbox = conn.execute(f'select count(*) from "{schema}".inbox').fetchone()
            public = conn.execute("select count(*) from public.inbox").fetchone()
        assert (inbox, public) == ((6,), (0,))
    finally:
        assert handle.stop() == 0

    assert "6 row(s) would be re-published" in cli("replay", "--all", "--dry-run", *names)
    assert "purged 6 inbox row(s)" in cli("inbox", "purge", "--older-than", "0", *names)
    assert "purged 6 published rows" in cli("purge", "--older-than", "0", *names)
    assert "dropped from" in cli("relay", "install-notify", "--drop", *names)
    assert cli("db", "check", *names).startswith("ok:")
    rendered = json.loads(cli("connect", "render", *names))["config"]
    assert rendered["table.include.list"] == f"{schema}.outbox"
    checked = CliRunner().invoke(main, ["connect", "check", *names])
    assert f"table {schema}.outbox does not exist" not in checked.output, checked.output
    assert f'FOR TABLE "{schema}"."outbox"' in checked.output  # the fix it prints is quoted
