"""Debezium CDC on the local Kafka Connect: config, apply, records, parity with the relay."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from click.testing import CliRunner

from connect.config import CdcOptions, render
from outbox.cli import main
from outbox.publish import Event
from outbox.record import OutboxRow, to_record
from outbox.settings import Settings
from tests.harness.connect import by_key, cdc, comparable, publish_each, read, wait_streaming
from tests.harness.running import relay_thread

__all__ = ["cdc"]  # the connector fixture (tests/harness/connect.py)


def test_render_masks_a_literal_password_and_routes_by_template() -> None:
    settings = Settings(database_url="postgresql://app:s3cret@db:5432/shop",
                        topic_template="shop.{aggregatetype}.events", db_schema="sales")
    config = render(settings, CdcOptions(name="shop-outbox"))
    assert config["database.password"] == "${env:OUTBOX_DATABASE_PASSWORD}"
    assert "s3cret" not in json.dumps(config)
    assert config["transforms.outbox.route.topic.replacement"] == "shop.${routedByValue}.events"
    assert config["table.include.list"] == "sales.outbox"
    assert (config["database.hostname"], config["database.dbname"]) == ("db", "shop")
    result = CliRunner().invoke(main, ["connect", "render", "--password-ref", "hunter2",
                                       "--database-url", "postgresql://app:s3cret@db/shop"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "s3cret" not in result.output
    assert '"database.password": "***"' in result.output
    bad = CliRunner().invoke(main, ["connect", "render", "--topic-template", "all-events",
                                    "--database-url", "postgresql://app@db/shop"])
    assert bad.exit_code == 3  # outbox.exit_codes.EXIT_CONFIG
    assert "has no {aggregatetype}" in bad.output


def events() -> list[Event]:
    out = []
    for n in range(12):
        agg = f"o-{n % 3}"
        out.append(Event("order", agg, f"Step{n}", {
            "orderId": agg, "n": n, "total": n * 1.5, "note": "é ✓", "items": [{"sku": "a"}],
            "nothing": None}, correlation_id=f"c-{n % 3}",
            causation_id="cause" if n % 2 else None, traceparent="00-ab-cd-01",
            tracestate="shop=t7,other=x" if n % 3 == 0 else None))
    out.append(Event("payment", "o-1", "Paid", {"orderId": "o-1"}, correlation_id="c-1",
                     causation_id="x", traceparent="00-ab-cd-01"))
    return out


def publish_all(url: str, evs: list[Event]) -> list[OutboxRow]:
    publish_each(url, evs)
    with psycopg.connect(url) as conn:
        return [OutboxRow(*r) for r in conn.execute(
            "select id, aggregatetype, aggregateid, type, payload, created_at, correlation_id, "
            "causation_id, traceparent, tracestate from outbox order by seq")]


def test_apply_then_events_arrive_as_pinned_and_match_the_relay(
        cdc: dict[str, Any], database_url: str, kafka_bootstrap: str,
        connect_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["connect", "validate", *cdc["args"]], env=cdc["env"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["connect", "apply", *cdc["args"]], env=cdc["env"])
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    result = runner.invoke(main, ["connect", "apply", *cdc["args"]], env=cdc["env"])
    assert "unchanged" in result.output
    wait_streaming(connect_url, cdc["name"])
    rows = publish_all(database_url, events())
    template: str = cdc["template"]
    cdc_prefix = template.split("{aggregatetype}", maxsplit=1)[0]
    got = read(kafka_bootstrap, template.replace("{aggregatetype}", "order"), 12) + read(
        kafka_bootstrap, template.replace("{aggregatetype}", "payment"), 1)
    # Pinned topic, key, value, headers and timestamp, as outbox/record.py defines them.
    expected = {row.id: to_record(row, template) for row in rows}
    for record in got:
        event_id = uuid.UUID((record.header("id") or b"").decode())
        exp = expected[event_id]
        assert (record.topic, record.key, record.value, record.timestamp_ms) == (
            exp.topic, exp.key, exp.value, exp.timestamp_ms)
        # Debezium also sends unset optional columns as headers with a null value.
        assert [(k, v) for k, v in record.headers if v is not None] == exp.headers

    # Parity: the relay publishes the same rows into another topic namespace.
    relay_template = template.replace("-cdc-", "-relay-")
    with relay_thread(Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                               topic_template=relay_template)):
        relayed = read(kafka_bootstrap, relay_template.replace("{aggregatetype}", "order"), 12)
        relayed += read(kafka_bootstrap, relay_template.replace("{aggregatetype}", "payment"), 1)
    relay_prefix = relay_template.split("{aggregatetype}")[0]
    assert by_key(comparable(got, cdc_prefix)) == by_key(comparable(relayed, relay_prefix))

    status = runner.invoke(main, ["connect", "status", *cdc["args"]], env=cdc["env"])
    assert status.exit_code == 0, status.output
    assert "RUNNING" in status.output
    assert "bytes behind" in status.output
    # The SQL publish function is rendered with the topic template: upgrade with this one.
    assert runner.invoke(main, ["db", "upgrade"], env=cdc["env"]).exit_code == 0
    check = runner.invoke(main, ["db", "check", "--cdc"], env=cdc["env"])
    assert check.exit_code == 0, check.output
    for action in ("pause", "resume", "restart"):
        result = runner.invoke(main, ["connect", action, "--name", cdc["name"]], env=cdc["env"])
        assert result.exit_code == 0, result.output


def test_missing_replication_permission_and_wrong_table_are_clear(
        cdc: dict[str, Any], database_url: str) -> None:
    role = "norepl_" + uuid.uuid4().hex[:6]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"create role {role} login password 'pw'")
        conn.execute(f"grant select on all tables in schema public to {role}")
    try:
        url = database_url.replace("outbox:outbox@", f"{role}:pw@")
        result = CliRunner().invoke(main, ["db", "check", "--cdc", "--database-url", url])
        assert result.exit_code == 1
        assert f'ALTER ROLE "{role}" WITH REPLICATION' in result.output
        result = CliRunner().invoke(main, ["connect", "check", *cdc["args"],
                                           "--outbox-table", "nope"], env=cdc["env"])
        assert result.exit_code == 1
        assert "table public.nope does not exist: run `outbox db upgrade`" in result.output
        assert "Traceback" not in result.output
        # Connect's own validation connects to the database: a wrong password comes back
        # as an error on the field, one line each (Debezium does not check REPLICATION
        # there, which is why `check` exists).
        result = CliRunner().invoke(main, ["connect", "validate", "--name", cdc["name"],
                                           "--password-ref", "wrong", "--database-url", url],
                                    env=cdc["env"])
        assert result.exit_code == 1, result.output
        assert "database." in result.output
        assert "Traceback" not in result.output
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")


def test_unreachable_connect_is_one_clear_line() -> None:
    result = CliRunner().invoke(main, ["connect", "status", "--connect-url",
                                       "http://127.0.0.1:1", "--database-url",
                                       "postgresql://u@127.0.0.1/db"])
    assert result.exit_code == 6  # outbox.exit_codes.EXIT_UNAVAILABLE
    assert "Kafka Connect at http://127.0.0.1:1 is not reachable" in result.output
