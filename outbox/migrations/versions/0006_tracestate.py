"""tracestate: the publishing span's W3C tracestate, sent as a header

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import context, op
from alembic.operations import Operations

from outbox.migrations.ddl import downgrade_schema_v6, upgrade_schema_v6
from outbox.settings import Settings

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _names() -> dict[str, str]:
    settings: Settings = context.config.attributes["settings"]
    return {"schema": settings.db_schema, "outbox": settings.outbox_table}


def upgrade() -> None:
    upgrade_schema_v6(Operations(op.get_context()), **_names())


def downgrade() -> None:
    downgrade_schema_v6(Operations(op.get_context()), **_names())
