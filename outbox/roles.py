"""Least-privilege database roles for writers, the relay, consumers, migrations and CDC.

``outbox db roles --sql`` prints the SQL of ``roles.sql`` for the configured schema and
tables; docs/operations.md explains each role. Two named steps, because table grants
need the tables: ``roles`` (roles and schema, as a superuser) before ``outbox db
upgrade``, ``grants`` after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from outbox.settings import Settings, check_identifier, qualified, quote_ident
from outbox.tables import relay_cursor_name

SQL_FILE = Path(__file__).resolve().parent / "roles.sql"
KINDS = ("migrator", "writer", "relay", "consumer", "cdc")


def statements() -> dict[str, str]:
    """The named blocks of ``roles.sql`` (``-- name: X`` up to the next one)."""
    blocks = re.split(r"^-- name: (\w+)\n", SQL_FILE.read_text(), flags=re.MULTILINE)
    return dict(zip(blocks[1::2], blocks[2::2], strict=True))


@dataclass(frozen=True)
class RoleNames:
    """The roles' names: ``<prefix>_migrator``, ``<prefix>_writer`` ..."""

    prefix: str = "outbox"

    def of(self, kind: str) -> str:
        """The role name of ``kind`` (one of :data:`KINDS`)."""
        return check_identifier(f"{self.prefix}_{kind}", f"role name ({kind})")


def render(settings: Settings, names: RoleNames, publication: str) -> dict[str, str]:
    """Each step's SQL (``roles``, ``grants``) for ``settings``' schema and tables."""
    check_identifier(publication, "publication name")
    values = {"schema": quote_ident(settings.db_schema),
              "outbox": qualified(settings.db_schema, settings.outbox_table),
              "inbox": qualified(settings.db_schema, settings.inbox_table),
              "cursor": qualified(settings.db_schema, relay_cursor_name(settings.outbox_table)),
              "publication": quote_ident(publication), "publication_name": publication}
    for kind in KINDS:
        # Plain identifiers (checked): safe inside the SQL string literals of the DO blocks.
        values[kind], values[f"{kind}_name"] = quote_ident(names.of(kind)), names.of(kind)
    return {name: body.format(**values) for name, body in statements().items()}


__all__ = ["KINDS", "RoleNames", "render", "statements"]
