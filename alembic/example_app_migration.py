"""add the transactional outbox (example: copy into your own alembic/versions/)

A migration of *your* application that creates the outbox toolkit's tables in your own
Alembic history. Adjust ``revision``/``down_revision`` to your history, and the names to
your settings (``OUTBOX_DB_SCHEMA``, ``OUTBOX_OUTBOX_TABLE``, ``OUTBOX_INBOX_TABLE``).

Each toolkit schema version is one function in ``outbox.migrations.ddl``: version 1
creates the tables, version 2 (``upgrade_schema_v2``) changes two indexes. A new
application calls them all, as below; one that already ran version 1 adds a migration of
its own that calls ``upgrade_schema_v2``. ``outbox db check`` tells you when you are behind.
"""

from __future__ import annotations

from alembic import op
from alembic.operations import Operations

from outbox.migrations.ddl import (
    create_schema_v1,
    downgrade_schema_v2,
    drop_schema_v1,
    upgrade_schema_v2,
)

revision = "add_outbox"
down_revision = None  # your previous revision
branch_labels = None
depends_on = None

NAMES = {"schema": "public", "outbox": "outbox", "inbox": "inbox"}


def upgrade() -> None:
    operations = Operations(op.get_context())
    create_schema_v1(operations, **NAMES)
    upgrade_schema_v2(operations, schema=NAMES["schema"], outbox=NAMES["outbox"])


def downgrade() -> None:
    operations = Operations(op.get_context())
    downgrade_schema_v2(operations, schema=NAMES["schema"], outbox=NAMES["outbox"])
    drop_schema_v1(operations, **NAMES)
