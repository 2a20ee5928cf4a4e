"""Trigger capture on a legacy table: the writer's SQL does not change, events appear."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from outbox import capture as captures
from outbox.cli import main
from outbox.errors import ConfigurationError
from outbox.settings import Settings
from tests.harness.connect import apply_connector, by_key, cdc, comparable, read
from tests.harness.running import relay_thread

__all__ = ["cdc"]  # the connector fixture (tests/harness/connect.py)

LEGACY_TABLE = """
create schema legacy;
create table legacy.orders (
    id text primary key,
    customer text not null,
    status text not null default 'NEW',
    total numeric(10, 2),
    note text
);
create index on legacy.orders (customer);
grant select on legacy.orders to public;
comment on table legacy.orders is 'the seed''s orders';
"""

# What a legacy service sends, unchanged from before the capture.
LEGACY_WRITES = [
    "insert into legacy.orders (id, customer, total) values ('o-1', 'ada', 10.50)",
    "insert into legacy.orders (id, customer, total) values ('o-2', 'bob', 3)",
    "update legacy.orders set status = 'RESERVED' where id = 'o-1'",
    "update legacy.orders set note = 'gift' where id = 'o-1'",  # still RESERVED: no event
    "update legacy.orders set status = 'RESERVED' where id = 'o-2'",
    "delete from legacy.orders where id = 'o-2'",
]


def run(url: str, *statements: str) -> None:
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def events(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("select aggregatetype, aggregateid, type, payload from outbox "
                            "order by seq").fetchall()


def table_definition(url: str) -> list[Any]:
    """Everything a DBA sees of legacy.orders: columns, indexes, constraints, triggers,
    grants, comment, rows."""
    with psycopg.connect(url) as conn:
        queries = [
            "select attname, format_type(atttypid, atttypmod), attnotnull, attnum "
            "from pg_attribute where attrelid = 'legacy.orders'::regclass and attnum > 0 "
            "order by attnum",
            "select indexdef from pg_indexes where schemaname = 'legacy' order by 1",
            "select conname, pg_get_constraintdef(oid) from pg_constraint "
            "where conrelid = 'legacy.orders'::regclass order by 1",
            "select tgname from pg_trigger where tgrelid = 'legacy.orders'::regclass",
            "select relacl::text, obj_description(oid, 'pg_class') from pg_class "
            "where oid = 'legacy.orders'::regclass",
            "select * from legacy.orders order by id",
        ]
        return [conn.execute(q).fetchall() for q in queries]


RESERVED = captures.Capture(
    name="order_reserved", table="legacy.orders", aggregate_type="order",
    aggregate_id_column="id", event_type="OrderReserved", operations=("insert", "update"),
    condition="new.status = 'RESERVED' and old.status is distinct from new.status")


def test_unchanged_legacy_statements_publish_in_their_transaction(database_url: str) -> None:
    run(database_url, LEGACY_TABLE)
    settings = Settings(database_url=database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert captures.add(conn, RESERVED, settings) is None
        gone = captures.Capture(name="order_gone", table="legacy.orders",
                                aggregate_type="order", aggregate_id_column="id",
                                event_type="OrderDeleted", operations=("delete", "update"),
                                columns=("id", "status"), with_old=True,
                                condition="tg_op = 'DELETE' or new.note is not null")
        captures.add(conn, gone, settings)
    run(database_url, *LEGACY_WRITES)
    assert events(database_url) == [
        ("order", "o-1", "OrderReserved", {"id": "o-1", "customer": "ada",
                                           "status": "RESERVED", "total": 10.50, "note": None}),
        ("order", "o-1", "OrderDeleted", {"op": "update", "new": {"id": "o-1",
                                                                  "status": "RESERVED"},
                                          "old": {"id": "o-1", "status": "RESERVED"}}),
        ("order", "o-2", "OrderReserved", {"id": "o-2", "customer": "bob",
                                           "status": "RESERVED", "total": 3, "note": None}),
        ("order", "o-2", "OrderDeleted", {"op": "delete", "new": None,
                                          "old": {"id": "o-2", "status": "RESERVED"}}),
    ]
    # A rolled-back write publishes nothing; a condition not met publishes nothing.
    with psycopg.connect(database_url) as conn:
        conn.execute("insert into legacy.orders (id, customer, status) values "
                     "('o-3', 'cy', 'RESERVED')")
        conn.rollback()
    run(database_url, "insert into legacy.orders (id, customer) values ('o-4', 'di')",
        "update legacy.orders set total = 1 where id = 'o-4'")
    assert len(events(database_url)) == 4
    # The events carry publish()'s lock and ids: the function ran, not a plain insert.
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("select id from outbox")]
    assert {i.version for i in ids} == {7}


def test_remove_leaves_the_table_as_it_was_and_add_replaces(database_url: str) -> None:
    run(database_url, LEGACY_TABLE,
        "insert into legacy.orders (id, customer) values ('o-1', 'ada')")
    before = table_definition(database_url)
    settings = Settings(database_url=database_url)
    env = {"OUTBOX_DATABASE_URL": database_url}
    runner = CliRunner()
    args = ["capture", "add", "legacy.orders", "--name", "order_reserved", "--event-type",
            "OrderReserved", "--aggregate-type", "order", "--aggregate-id-column", "id",
            "--on", "update", "--when", RESERVED.condition or ""]
    result = runner.invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "installed capture order_reserved" in result.output
    again = runner.invoke(main, [*args[:-4], "--on", "insert,delete", "--columns", "id"],
                          env=env)
    assert again.exit_code == 0, again.output
    assert "replaced capture order_reserved" in again.output
    listed = runner.invoke(main, ["capture", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert listed.output.strip() == (
        "order_reserved: legacy.orders on insert/delete -> OrderReserved (order, key id; "
        "payload id)")
    with psycopg.connect(database_url) as conn:
        (found,) = captures.installed(conn, settings)
        assert found.capture is not None
        assert found.capture.operations == ("insert", "delete")
        assert conn.execute("select count(*) from pg_trigger where tgrelid = "
                            "'legacy.orders'::regclass").fetchone() == (1,)
    sql = runner.invoke(main, ["capture", "remove", "order_reserved", "--sql"], env=env)
    assert sql.exit_code == 0, sql.output
    assert 'drop trigger if exists "outbox_capture_order_reserved" on "legacy"."orders";' in (
        sql.output)
    removed = runner.invoke(main, ["capture", "remove", "order_reserved"], env=env)
    assert removed.exit_code == 0, removed.output
    assert table_definition(database_url) == before
    assert runner.invoke(main, ["capture", "list"], env=env).output.strip() == (
        "no captures in schema public")
    run(database_url, "insert into legacy.orders (id, customer) values ('o-9', 'zed')")
    assert events(database_url) == []


@pytest.mark.parametrize(("change", "message"), [
    ({"condition": "new.stauts = 'X'"}, "capture condition \"new.stauts = 'X'\" does not "
                                        "work on legacy.orders: column new.stauts does not "
                                        "exist"),
    ({"aggregate_id_column": "order_id"}, "table legacy.orders has no column 'order_id'"),
    ({"table": "legacy.nope"}, "table legacy.nope does not exist"),
    ({"aggregate_type": "ordér 🚀"}, "routes to topic 'ordér 🚀-events'"),
    ({"operations": ("upsert",)}, "capture operations 'upsert': choose from"),
    ({"name": "Bad-Name"}, "capture name 'Bad-Name' must be"),
])
def test_a_capture_that_could_not_publish_is_refused_at_add(
        database_url: str, change: dict[str, Any], message: str) -> None:
    run(database_url, LEGACY_TABLE)
    spec = captures.Capture(**{**RESERVED.__dict__, **change})
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(ConfigurationError) as info:
            captures.add(conn, spec, Settings(database_url=database_url))
        assert message in str(info.value)
        assert captures.installed(conn, Settings()) == []
    cli = CliRunner().invoke(main, [
        "capture", "add", spec.table, "--name", spec.name, "--event-type", spec.event_type,
        "--aggregate-type", spec.aggregate_type, "--aggregate-id-column",
        spec.aggregate_id_column, "--on", ",".join(spec.operations), "--when",
        spec.condition or "true"], env={"OUTBOX_DATABASE_URL": database_url})
    assert cli.exit_code == 3  # outbox.exit_codes.EXIT_CONFIG
    assert "Traceback" not in cli.output
    assert len(cli.output.strip().splitlines()) == 1


def test_captured_events_through_the_relay_and_debezium_are_equal(
        cdc: dict[str, Any], database_url: str, kafka_bootstrap: str) -> None:
    run(database_url, LEGACY_TABLE)
    with psycopg.connect(database_url, autocommit=True) as conn:
        captures.add(conn, RESERVED, Settings(database_url=database_url))
    apply_connector(cdc)
    run(database_url, *LEGACY_WRITES)
    template: str = cdc["template"]
    got = read(kafka_bootstrap, template.replace("{aggregatetype}", "order"), 2)
    assert len(got) == 2
    relay_template = template.replace("-cdc-", "-relay-")
    with relay_thread(Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                               topic_template=relay_template)):
        relayed = read(kafka_bootstrap, relay_template.replace("{aggregatetype}", "order"), 2)
    cdc_prefix = template.split("{aggregatetype}", maxsplit=1)[0]
    relay_prefix = relay_template.split("{aggregatetype}", maxsplit=1)[0]
    # Equal records, except that Debezium prints a numeric column's value as a double
    # (10.50 -> 10.5, 3.00 -> 3.0; docs/cdc.md): the same JSON numbers to a consumer.
    def decoded(records: list[Any], prefix: str) -> dict[bytes, list[tuple[Any, ...]]]:
        return {key: [(*r[:3], json.loads(r[3]), r[4]) for r in rows]
                for key, rows in by_key(comparable(records, prefix)).items()}

    assert decoded(got, cdc_prefix) == decoded(relayed, relay_prefix)
    assert [r.value for r in relayed if r.key == b"o-1"] == [
        b'{"id":"o-1","note":null,"total":10.50,"status":"RESERVED","customer":"ada"}']
    assert {r.key for r in got} == {b"o-1", b"o-2"}
    assert all(r.header("eventType") == b"OrderReserved" for r in got)
