"""the SQL publish function: publish() for any language and for capture triggers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import downgrade_schema_v4, upgrade_schema_v4
from outbox.settings import Settings

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _settings() -> Settings:
    settings: Settings = context.config.attributes["settings"]
    return settings


def upgrade() -> None:
    s = _settings()
    upgrade_schema_v4(Operations(op.get_context()), schema=s.db_schema, outbox=s.outbox_table,
                      topic_template=s.topic_template, max_payload_bytes=s.max_payload_bytes,
                      max_record_bytes=s.max_record_bytes)


def downgrade() -> None:
    s = _settings()
    downgrade_schema_v4(Operations(op.get_context()), schema=s.db_schema, outbox=s.outbox_table)
