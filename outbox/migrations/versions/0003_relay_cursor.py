"""the relay records delivery per shard (txid + relay cursor), not per row

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import downgrade_schema_v3, upgrade_schema_v3
from outbox.settings import Settings

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _names() -> dict[str, str]:
    settings: Settings = context.config.attributes["settings"]
    return {"schema": settings.db_schema, "outbox": settings.outbox_table}


def upgrade() -> None:
    upgrade_schema_v3(Operations(op.get_context()), **_names())


def downgrade() -> None:
    downgrade_schema_v3(Operations(op.get_context()), **_names())
