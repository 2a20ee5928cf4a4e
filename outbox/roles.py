"""Least-privilege database roles for writers, the relay, consumers, migrations and CDC.

``outbox db roles --sql`` prints the SQL of ``outbox/sql/roles.sql`` for the configured
schema and tables; docs/operations.md explains each role. Three named steps, because
table grants need the tables: ``roles`` (roles and schema, as a superuser) before
``outbox db upgrade``, ``grants`` (as the migrations role) and ``publication`` (CDC only,
as a superuser) after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from outbox.names import relay_cursor_name
from outbox.publish_sql import function_name
from outbox.settings import Settings, check_identifier, qualified, quote_ident
from outbox.sql import literal, render, statements

KINDS = ("migrator", "writer", "relay", "consumer", "cdc")
STEPS = ("roles", "grants", "publication")


@dataclass(frozen=True)
class RoleNames:
    """The roles' names: ``<prefix>_migrator``, ``<prefix>_writer`` ..."""

    prefix: str = "outbox"

    def of(self, kind: str) -> str:
        """The role name of ``kind`` (one of :data:`KINDS`)."""
        return check_identifier(f"{self.prefix}_{kind}", f"role name ({kind})")


def render_steps(settings: Settings, names: RoleNames, publication: str) -> dict[str, str]:
    """Each step's SQL (:data:`STEPS`) for ``settings``' schema and tables."""
    check_identifier(publication, "publication name")
    values = {"schema": quote_ident(settings.db_schema),
              "outbox": qualified(settings.db_schema, settings.outbox_table),
              "inbox": qualified(settings.db_schema, settings.inbox_table),
              "cursor": qualified(settings.db_schema, relay_cursor_name(settings.outbox_table)),
              "publish_function": qualified(settings.db_schema,
                                            function_name(settings.outbox_table)),
              "publication": quote_ident(publication),
              "publication_literal": literal(publication)}
    for kind in KINDS:
        values[kind] = quote_ident(names.of(kind))
        values[f"{kind}_literal"] = literal(names.of(kind))
    blocks = statements("roles.sql")
    return {step: render(blocks[step], **values) for step in STEPS}


__all__ = ["KINDS", "STEPS", "RoleNames", "render_steps"]
