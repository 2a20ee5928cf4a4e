"""outbox and inbox tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import create_schema_v1, drop_schema_v1
from outbox.settings import Settings

revision = "0001"
down_revision = None
branch_labels = ("outbox",)
depends_on = None


def _names() -> dict[str, str]:
    settings: Settings = context.config.attributes["settings"]
    return {"schema": settings.db_schema, "outbox": settings.outbox_table,
            "inbox": settings.inbox_table}


def upgrade() -> None:
    create_schema_v1(Operations(op.get_context()), **_names())


def downgrade() -> None:
    drop_schema_v1(Operations(op.get_context()), **_names())
