"""cheaper outbox writes: drop the aggregate and published_at indexes

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import downgrade_schema_v2, upgrade_schema_v2
from outbox.settings import Settings

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _names() -> dict[str, str]:
    settings: Settings = context.config.attributes["settings"]
    return {"schema": settings.db_schema, "outbox": settings.outbox_table}


def upgrade() -> None:
    upgrade_schema_v2(Operations(op.get_context()), **_names())


def downgrade() -> None:
    downgrade_schema_v2(Operations(op.get_context()), **_names())
