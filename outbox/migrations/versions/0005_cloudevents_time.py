"""ce_time: created_at as CloudEvents' time, for Debezium's ce_time header

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import downgrade_schema_v5, upgrade_schema_v5
from outbox.settings import Settings

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _names() -> dict[str, str]:
    settings: Settings = context.config.attributes["settings"]
    return {"schema": settings.db_schema, "outbox": settings.outbox_table}


def upgrade() -> None:
    upgrade_schema_v5(Operations(op.get_context()), **_names())


def downgrade() -> None:
    downgrade_schema_v5(Operations(op.get_context()), **_names())
