"""The toolkit's DDL as Alembic operations, one function per schema version.

The toolkit's own migrations call these, and so can an application that keeps the
toolkit's tables in its own Alembic history (docs/migrations.md): call the same function
from a migration of yours, with your schema and table names.

Written out column by column rather than derived from ``outbox.tables``: a migration is a
record of what a version *was*; the no-drift test checks the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.dialects import postgresql

from outbox import publish_sql
from outbox.names import relay_cursor_name
from outbox.settings import Settings, check_identifier, qualified, quote_ident
from outbox.tables import Xid8, ce_time_sql

UTC_NOW = sa.text("(now() at time zone 'utc')")


def create_schema_sql(schema: str) -> str:
    """Create ``schema`` unless it exists. Not ``create schema if not exists``: that needs
    CREATE on the database even when the schema is there, which a least-privilege
    migrations role (``outbox db roles``) does not have."""
    check_identifier(schema, "schema")
    return (f"do $schema$ begin if not exists (select from pg_namespace where nspname = "
            f"'{schema}') then create schema {quote_ident(schema)}; end if; end $schema$")


def create_schema_v1(op: Operations, schema: str = "public", outbox: str = "outbox",
                     inbox: str = "inbox") -> None:
    """Version 1: the outbox table and the inbox table, with their indexes."""
    for value, what in ((schema, "schema"), (outbox, "outbox table"), (inbox, "inbox table")):
        check_identifier(value, what)
    op.execute(sa.text(create_schema_sql(schema)))
    op.create_table(
        outbox,
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("aggregatetype", sa.String(255), nullable=False),
        sa.Column("aggregateid", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False,
                  server_default=UTC_NOW),
        sa.Column("correlation_id", sa.String(255), nullable=True),
        sa.Column("causation_id", sa.String(255), nullable=True),
        sa.Column("traceparent", sa.String(255), nullable=True),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("shard", sa.SmallInteger(),
                  sa.Computed("(abs(hashtextextended(aggregateid, 0) % 256))::smallint",
                              persisted=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=False), nullable=True),
        sa.PrimaryKeyConstraint("id", name=f"{outbox}_pkey"),
        sa.UniqueConstraint("seq", name=f"{outbox}_seq_key"),
        schema=schema,
    )
    op.create_index(f"ix_{outbox}_pending", outbox, ["shard", "seq"], schema=schema,
                    postgresql_where=sa.text("published_at is null and failed_at is null"))
    op.create_index(f"ix_{outbox}_published_at", outbox, ["published_at"], schema=schema,
                    postgresql_where=sa.text("published_at is not null"))
    op.create_index(f"ix_{outbox}_aggregate", outbox, ["aggregatetype", "aggregateid", "seq"],
                    schema=schema)
    op.create_table(
        inbox,
        sa.Column("consumer_group", sa.String(255), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("topic", sa.String(255), nullable=True),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=False), nullable=False,
                  server_default=UTC_NOW),
        sa.PrimaryKeyConstraint("consumer_group", "event_id", name=f"pk_{inbox}"),
        schema=schema,
    )
    op.create_index(f"ix_{inbox}_processed_at", inbox, ["processed_at"], schema=schema)


def upgrade_schema_v2(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Version 2: cheaper writes and marks, the same reads for the relay.

    - ``ix_<outbox>_aggregate`` (aggregatetype, aggregateid, seq) is dropped: nothing on the
      hot path reads it, yet every publish and every "mark published" (a non-HOT update, so
      each index gets a new entry) paid for its three-column entry. ``outbox replay
      --aggregate-id`` and ``outbox relay retry-failed --aggregate-id`` scan instead.
    - ``ix_<outbox>_published_at`` is dropped for the same reason: each mark inserted an
      entry. Retention walks the ``seq`` index from the oldest row instead
      (``relay.queries.Queries.purge_batch``).

    Measured in docs/benchmarks.md (Relay, "Second session": step 1).
    """
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    op.drop_index(f"ix_{outbox}_aggregate", outbox, schema=schema)
    op.drop_index(f"ix_{outbox}_published_at", outbox, schema=schema)


def downgrade_schema_v2(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Back to version 1's B-tree indexes."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    op.create_index(f"ix_{outbox}_published_at", outbox, ["published_at"], schema=schema,
                    postgresql_where=sa.text("published_at is not null"))
    op.create_index(f"ix_{outbox}_aggregate", outbox, ["aggregatetype", "aggregateid", "seq"],
                    schema=schema)


def _delivered_by_cursor_v3(row: str, cursor: str) -> str:
    """SQL: row ``row`` (an alias) is delivered according to schema version 3's relay
    cursor table ``cursor`` (qualified). A migration's own copy, frozen with the schema it
    undoes: the relay's runtime predicate is ``relay.queries.delivered_on_fast_path``."""
    return (f"({row}.txid is not null and {row}.last_error is null and exists ("
            f"select 1 from {cursor} c where c.shard = {row}.shard and ("
            f"pg_visible_in_snapshot({row}.txid, c.done::pg_snapshot) or (c.win is not null "
            f"and {row}.seq <= c.upto and pg_visible_in_snapshot({row}.txid, "
            "c.win::pg_snapshot)))))")


def upgrade_schema_v3(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Version 3: the relay stops updating each delivered row.

    - ``txid xid8`` (default ``pg_current_xact_id()``): with PostgreSQL snapshots the relay
      reads "rows committed since I last looked" and records its progress once per batch
      per shard in ``<outbox>_relay_cursor`` instead of an ``UPDATE`` per row. Added
      without a table rewrite (nullable, default set afterwards); pending rows get the
      migration's own transaction id, so the relay's first window picks them up. Rows
      published before this version keep ``txid`` null and their ``published_at``.
    - ``ix_<outbox>_window (shard, txid)`` replaces ``ix_<outbox>_pending``; rows taken off
      the fast path (a failed delivery, held behind one) are found through the small
      partial ``ix_<outbox>_retry``.
    """
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    cursor = relay_cursor_name(outbox)
    table = qualified(schema, outbox)
    op.add_column(outbox, sa.Column("txid", Xid8(), nullable=True), schema=schema)
    op.execute(sa.text(f"alter table {table} alter column txid set default pg_current_xact_id()"))
    op.execute(sa.text(f"update {table} set txid = pg_current_xact_id() where published_at "
                       "is null and failed_at is null and last_error is null"))
    op.create_index(f"ix_{outbox}_window", outbox, ["shard", "txid"], schema=schema)
    op.create_index(f"ix_{outbox}_retry", outbox, ["shard", "seq"], schema=schema,
                    postgresql_where=sa.text("last_error is not null and published_at is null"))
    op.drop_index(f"ix_{outbox}_pending", outbox, schema=schema)
    op.create_table(
        cursor,
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("done", sa.Text(), nullable=False),
        sa.Column("win", sa.Text(), nullable=True),
        sa.Column("upto", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False,
                  server_default=UTC_NOW),
        sa.PrimaryKeyConstraint("shard", name=f"pk_{cursor}"),
        schema=schema,
    )


def downgrade_schema_v3(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Back to version 2: rows the cursor records as delivered get ``published_at``, so a
    version-2 relay does not send them again."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    cursor = relay_cursor_name(outbox)
    table = qualified(schema, outbox)
    delivered = _delivered_by_cursor_v3("o", qualified(schema, cursor))
    op.execute(sa.text(f"update {table} o set published_at = {UTC_NOW.text} "
                       f"where o.published_at is null and o.failed_at is null and {delivered}"))
    op.create_index(f"ix_{outbox}_pending", outbox, ["shard", "seq"], schema=schema,
                    postgresql_where=sa.text("published_at is null and failed_at is null"))
    op.drop_table(cursor, schema=schema)
    op.drop_index(f"ix_{outbox}_retry", outbox, schema=schema)
    op.drop_index(f"ix_{outbox}_window", outbox, schema=schema)
    op.drop_column(outbox, "txid", schema=schema)


def _function_settings(schema: str, outbox: str, topic_template: str,
                       max_payload_bytes: int | None, max_record_bytes: int | None) -> Settings:
    values: dict[str, object] = {"db_schema": schema, "outbox_table": outbox,
                                 "topic_template": topic_template}
    if max_payload_bytes is not None:
        values["max_payload_bytes"] = max_payload_bytes
    if max_record_bytes is not None:
        values["max_record_bytes"] = max_record_bytes
    return Settings(**values)  # type: ignore[arg-type]


def _execute(op: Operations, statement: str) -> None:
    # A backslash before each colon: SQLAlchemy's text() would take ':name' for a parameter.
    op.execute(sa.text(statement.replace(":", "\\:")))


def upgrade_schema_v4(op: Operations, schema: str = "public", outbox: str = "outbox",
                      topic_template: str = "{aggregatetype}-events",
                      max_payload_bytes: int | None = None,
                      max_record_bytes: int | None = None) -> None:
    """Version 4: the SQL publish function ``<outbox>_publish(aggregatetype, aggregateid,
    type, payload jsonb, correlation_id, causation_id, traceparent) returns uuid``, so any
    language (and capture triggers) publishes with publish()'s lock, rules and UUIDv7 ids.

    The topic template and the limits (defaults: the toolkit's) are rendered into the body;
    pass the ones your writers and relay use (outbox.publish_sql).
    """
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    settings = _function_settings(schema, outbox, topic_template, max_payload_bytes,
                                  max_record_bytes)
    for statement in publish_sql.create_sql(settings):
        _execute(op, statement)


def downgrade_schema_v4(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Back to version 3: the function is dropped (capture triggers calling it must be
    removed first: `outbox capture remove`)."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    _execute(op, publish_sql.drop_sql(Settings(db_schema=schema, outbox_table=outbox)))


def upgrade_schema_v5(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Version 5: ``ce_time text``, ``created_at`` as RFC 3339 UTC with milliseconds, which
    Debezium places as the ``ce_time`` header in CloudEvents binary mode
    (outbox.cloudevents; the relay formats the same text itself). Set by the trigger
    ``<outbox>_ce_time`` on insert (and on an update of ``created_at``): a generated column
    would be simpler, but PostgreSQL's logical replication leaves generated columns out
    (before version 18). Added without a table rewrite; rows already there keep null.
    And ``ce_specversion text default '1.0'``, the ``ce_specversion`` header (a column as
    Kafka's InsertHeader would turn the literal 1.0 into the number 1)."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    op.add_column(outbox, sa.Column("ce_time", sa.Text(), nullable=True), schema=schema)
    op.add_column(outbox, sa.Column("ce_specversion", sa.Text(), nullable=True,
                                    server_default=sa.text("'1.0'")), schema=schema)
    for statement in ce_time_trigger_sql(schema, outbox):
        _execute(op, statement)


def ce_time_trigger_sql(schema: str, outbox: str) -> list[str]:
    """The trigger function and trigger that keep ``ce_time`` equal to ``created_at``."""
    function = qualified(schema, f"{outbox}_ce_time")
    return [
        f"create or replace function {function}() returns trigger language plpgsql as $$ "
        f"begin new.ce_time := {ce_time_sql('new.created_at')}; return new; end $$",
        f"create trigger {quote_ident(outbox + '_ce_time')} before insert or update of "
        f"created_at on {qualified(schema, outbox)} for each row execute function "
        f"{function}()"]


def downgrade_schema_v5(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Back to version 4: the trigger, its function and the column are dropped."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    _execute(op, f"drop trigger if exists {quote_ident(outbox + '_ce_time')} on "
                 f"{qualified(schema, outbox)}")
    _execute(op, f"drop function if exists {qualified(schema, outbox + '_ce_time')}()")
    op.drop_column(outbox, "ce_specversion", schema=schema)
    op.drop_column(outbox, "ce_time", schema=schema)


def upgrade_schema_v6(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Version 6: ``tracestate text``, the W3C ``tracestate`` of the publishing span (vendor
    trace data next to ``traceparent``), which the relay and Debezium send as the
    ``tracestate`` header (outbox.tracing). Nullable, added without a table rewrite."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    op.add_column(outbox, sa.Column("tracestate", sa.Text(), nullable=True), schema=schema)


def downgrade_schema_v6(op: Operations, schema: str = "public", outbox: str = "outbox") -> None:
    """Back to version 5: the column is dropped (a relay or connector of version 6 reads it:
    stop them, or downgrade them, first)."""
    for value, what in ((schema, "schema"), (outbox, "outbox table")):
        check_identifier(value, what)
    op.drop_column(outbox, "tracestate", schema=schema)


def drop_schema_v1(op: Operations, schema: str = "public", outbox: str = "outbox",
                   inbox: str = "inbox") -> None:
    """Undo version 1: drop the two tables (the schema itself is left alone)."""
    for value, what in ((schema, "schema"), (outbox, "outbox table"), (inbox, "inbox table")):
        check_identifier(value, what)
    op.drop_table(inbox, schema=schema)
    op.drop_table(outbox, schema=schema)
