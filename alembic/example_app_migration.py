"""add the transactional outbox (example: copy into your own alembic/versions/)

A migration of *your* application that creates the outbox toolkit's tables in your own
Alembic history. Adjust ``revision``/``down_revision`` to your history, and the names to
your settings (``OUTBOX_DB_SCHEMA``, ``OUTBOX_OUTBOX_TABLE``, ``OUTBOX_INBOX_TABLE``).

When a later toolkit version ships a new schema version (``create_schema_v2`` …), add a
migration of yours that calls it; ``outbox db check`` tells you when you are behind.
"""

from __future__ import annotations

from alembic import op
from alembic.operations import Operations

from outbox.migrations.ddl import create_schema_v1, drop_schema_v1

revision = "add_outbox"
down_revision = None  # your previous revision
branch_labels = None
depends_on = None

NAMES = {"schema": "public", "outbox": "outbox", "inbox": "inbox"}


def upgrade() -> None:
    create_schema_v1(Operations(op.get_context()), **NAMES)


def downgrade() -> None:
    drop_schema_v1(Operations(op.get_context()), **NAMES)
