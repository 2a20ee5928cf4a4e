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

from outbox.settings import check_identifier

UTC_NOW = sa.text("(now() at time zone 'utc')")


def create_schema_v1(op: Operations, schema: str = "public", outbox: str = "outbox",
                     inbox: str = "inbox") -> None:
    """Version 1: the outbox table and the inbox table, with their indexes."""
    for value, what in ((schema, "schema"), (outbox, "outbox table"), (inbox, "inbox table")):
        check_identifier(value, what)
    op.execute(sa.text(f'create schema if not exists "{schema}"'))
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


def drop_schema_v1(op: Operations, schema: str = "public", outbox: str = "outbox",
                   inbox: str = "inbox") -> None:
    """Undo version 1: drop the two tables (the schema itself is left alone)."""
    for value, what in ((schema, "schema"), (outbox, "outbox table"), (inbox, "inbox table")):
        check_identifier(value, what)
    op.drop_table(inbox, schema=schema)
    op.drop_table(outbox, schema=schema)
