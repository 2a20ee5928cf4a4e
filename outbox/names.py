"""Names and numbers of the outbox schema that code without SQLAlchemy needs (the relay).

outbox.tables (the SQLAlchemy definitions) re-exports them; importing SQLAlchemy cost the
relay ~0.2 s of its start-up for these two.
"""

from __future__ import annotations

from outbox.settings import check_identifier

# Rows are spread over this many shards by a hash of the aggregate id, computed by
# PostgreSQL itself (a generated column), so any writer, in any language, agrees. Relay
# instances divide the shards between them; one shard is never owned by two instances,
# which keeps per-aggregate order. Changing it requires a migration of the column.
SHARD_COUNT = 256


def relay_cursor_name(outbox: str) -> str:
    """The relay's cursor table of an outbox table: ``<outbox>_relay_cursor``."""
    return check_identifier(f"{outbox}_relay_cursor", "relay cursor table name (outbox "
                            "table name + '_relay_cursor')")
