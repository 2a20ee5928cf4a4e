"""Table definitions: the Debezium-compatible ``outbox`` table and the consumers' ``inbox``.

Pinned columns (docs/contracts.md) keep the names and types Debezium's outbox
``EventRouter`` expects by default. The toolkit's bookkeeping columns come after them;
Debezium ignores columns it is not told about.

Schema and table names come from configuration and are checked as plain identifiers
(:func:`outbox.settings.check_identifier`) before they reach SQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Computed,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.types import UserDefinedType

from outbox.names import SHARD_COUNT, relay_cursor_name
from outbox.settings import Settings, check_identifier

UTC_NOW = text("(now() at time zone 'utc')")


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id type (``xid8``)."""

    cache_ok = True

    def get_col_spec(self, **_kw: object) -> str:
        return "xid8"


# Reflection (Alembic's drift check) knows the type by name.
ischema_names["xid8"] = Xid8


def _two(field: str, column: str) -> str:
    return f"lpad(extract({field} from {column})::int::text, 2, '0')"


def ce_time_sql(column: str = "created_at") -> str:
    """``column`` (a UTC timestamp) as RFC 3339 with milliseconds, ``2026-12-01T20:16:10.123Z``,
    in immutable functions only (``to_char`` depends on no setting here, but is not
    declared so). Milliseconds are truncated, as the record timestamp is
    (outbox.cloudevents)."""
    return (f"lpad(extract(year from {column})::int::text, 4, '0') || '-' || "
            f"{_two('month', column)} || '-' || {_two('day', column)} || 'T' || "
            f"{_two('hour', column)} || ':' || {_two('minute', column)} || ':' || "
            f"lpad(floor(extract(second from {column}))::int::text, 2, '0') || '.' || "
            f"lpad((floor(extract(microseconds from {column}) / 1000)::int % 1000)::text, 3, "
            "'0') || 'Z'")


def outbox_table(metadata: MetaData, name: str = "outbox", schema: str | None = None) -> Table:
    """The outbox table: one row per event, written in the service's own transaction."""
    check_identifier(name, "outbox table name")
    if schema is not None:
        check_identifier(schema, "schema name")
    return Table(
        name,
        metadata,
        # --- pinned by DESIGN.md (Debezium outbox router defaults) ---
        # id: the event id, UUIDv7 (time-ordered); Kafka header `id`.
        Column("id", UUID(as_uuid=True), primary_key=True),
        # aggregatetype routes the event to a topic (order -> order-events).
        Column("aggregatetype", String(255), nullable=False),
        # aggregateid is the Kafka message key.
        Column("aggregateid", String(255), nullable=False),
        # type is the event type; Kafka header `eventType`.
        Column("type", String(255), nullable=False),
        # payload is the Kafka message value.
        Column("payload", JSONB),
        # Without time zone: Debezium maps timestamptz to a string and cannot use it as
        # the record timestamp. Always UTC.
        Column("created_at", DateTime(timezone=False), nullable=False, server_default=UTC_NOW),
        Column("correlation_id", String(255)),
        Column("causation_id", String(255)),
        Column("traceparent", String(255)),
        # tracestate: the publishing span's W3C tracestate, the `tracestate` header when set
        # (schema version 6, outbox.tracing).
        Column("tracestate", Text),
        # --- the toolkit's bookkeeping ---
        # seq: insert order; per aggregate it is commit order (docs/ordering.md).
        Column("seq", BigInteger, Identity(always=True), nullable=False, unique=True),
        # hashtextextended is immutable, so PostgreSQL can store it as a generated column;
        # the modulo comes before abs() so the result cannot overflow.
        Column("shard", SmallInteger,
               Computed(f"(abs(hashtextextended(aggregateid, 0) % {SHARD_COUNT}))::smallint",
                        persisted=True),
               nullable=False),
        # published_at: when Kafka acknowledged a row the relay delivered one by one (a
        # row that failed once, see last_error). Rows on the fast path are never updated:
        # the relay's cursor (<name>_relay_cursor) records them as delivered (docs/relay.md).
        Column("published_at", DateTime(timezone=False)),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        # last_error: set the first time the relay takes the row off the fast path (a
        # failed delivery, or held behind an earlier failed row of its aggregate).
        Column("last_error", Text),
        # failed_at: set when the relay gave up on the row (shown by `outbox status`).
        Column("failed_at", DateTime(timezone=False)),
        # txid: the writing transaction's id. With PostgreSQL snapshots it tells the relay
        # which rows committed since it last looked (schema version 3).
        Column("txid", Xid8(), server_default=text("pg_current_xact_id()")),
        # ce_time: created_at as CloudEvents' time (RFC 3339), set by a trigger for Debezium
        # to place as the ce_time header in CloudEvents binary mode (schema version 5,
        # outbox.cloudevents). Not a generated column: logical replication leaves those out.
        Column("ce_time", Text),
        # ce_specversion: CloudEvents' spec version, the ce_specversion header (version 5).
        Column("ce_specversion", Text, server_default=text("'1.0'")),
        Index(f"ix_{name}_window", "shard", "txid"),
        Index(f"ix_{name}_retry", "shard", "seq", postgresql_where=text(
            "last_error is not null and published_at is null")),
        # No index on published_at or (aggregatetype, aggregateid): every publish would
        # pay for it (schema version 2, outbox.migrations.ddl.upgrade_schema_v2).
        schema=schema,
    )


def relay_cursor_table(metadata: MetaData, outbox: str = "outbox",
                       schema: str | None = None) -> Table:
    """Per shard, how far the relay has delivered the outbox (relay.window explains it).

    A row of shard ``s`` on the fast path is delivered when its ``txid`` is visible in
    the snapshot ``done``, or visible in ``win`` with ``seq <= upto``.
    """
    if schema is not None:
        check_identifier(schema, "schema name")
    return Table(
        relay_cursor_name(outbox),
        metadata,
        Column("shard", SmallInteger, nullable=False),
        # pg_snapshot as text ('xmin:xmax:xip,...'): every transaction visible in it whose
        # rows of this shard are on the fast path has been delivered.
        Column("done", Text, nullable=False),
        # The window being delivered (null between windows) and the last seq delivered in it.
        Column("win", Text),
        Column("upto", BigInteger, nullable=False, server_default=text("0")),
        Column("updated_at", DateTime(timezone=False), nullable=False, server_default=UTC_NOW),
        PrimaryKeyConstraint("shard", name=f"pk_{relay_cursor_name(outbox)}"),
        schema=schema,
    )


def inbox_table(metadata: MetaData, name: str = "inbox", schema: str | None = None) -> Table:
    """The consumers' dedupe table: one row per (consumer group, event id) handled."""
    check_identifier(name, "inbox table name")
    if schema is not None:
        check_identifier(schema, "schema name")
    return Table(
        name,
        metadata,
        Column("consumer_group", String(255), nullable=False),
        Column("event_id", UUID(as_uuid=True), nullable=False),
        Column("topic", String(255)),
        Column("partition", Integer),
        Column("offset", BigInteger),
        Column("processed_at", DateTime(timezone=False), nullable=False,
               server_default=UTC_NOW),
        PrimaryKeyConstraint("consumer_group", "event_id", name=f"pk_{name}"),
        Index(f"ix_{name}_processed_at", "processed_at"),
        schema=schema,
    )


def tables_for(settings: Settings, metadata: MetaData | None = None) -> tuple[Table, Table]:
    """The outbox and inbox tables named by ``settings`` (the relay's cursor table joins
    them in ``metadata``)."""
    metadata = metadata if metadata is not None else MetaData()
    schema = settings.db_schema
    tables = (outbox_table(metadata, settings.outbox_table, schema),
              inbox_table(metadata, settings.inbox_table, schema))
    relay_cursor_table(metadata, settings.outbox_table, schema)
    return tables
