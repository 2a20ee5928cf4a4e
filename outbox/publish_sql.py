"""The SQL function ``<outbox>_publish``: ``publish()`` for any language.

Migration 0004 installs it in the toolkit's schema (``public.outbox_publish`` with the
default names). Its body is rendered from :mod:`outbox.rules` and the settings in force at
install time (``outbox/sql/publish.sql``): the outbox table, the advisory-lock namespace,
the topic template and the size limits are constants in it, so a call costs no lookup.
``outbox db check`` reports a body that differs from what the current settings render (a
changed ``OUTBOX_TOPIC_TEMPLATE`` or limit, or a newer toolkit), and ``outbox db upgrade``
replaces it.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outbox import rules
from outbox.locks import AGGREGATE_LOCK_NAMESPACE
from outbox.settings import Settings, qualified
from outbox.sql import literal, render, statements, unicode_literal

# Bumped when the body changes in a way the rendered values do not show.
RULES_VERSION = 1


def function_name(outbox_table: str) -> str:
    """The function's name for an outbox table: ``outbox`` -> ``outbox_publish``."""
    return f"{outbox_table}_publish"


def _values(settings: Settings) -> dict[str, str]:
    fingerprint = (f"outbox-toolkit rules v{RULES_VERSION}: topic template "
                   f"{settings.topic_template!r}, max_payload_bytes "
                   f"{settings.max_payload_bytes}, max_record_bytes "
                   f"{settings.max_record_bytes}")
    return {
        "function": qualified(settings.db_schema, function_name(settings.outbox_table)),
        "table": qualified(settings.db_schema, settings.outbox_table),
        # A comment line inside the dollar-quoted body: one line, no dollar sign.
        "fingerprint": "".join(c if c.isprintable() and c != "$" else "?"
                               for c in fingerprint),
        "whitespace": unicode_literal(rules.WHITESPACE),
        "max_field_length": str(rules.MAX_FIELD_LENGTH),
        "topic_template": literal(settings.topic_template),
        "max_payload_bytes": str(int(settings.max_payload_bytes)),
        "max_record_bytes": str(int(settings.max_record_bytes)),
        "lock_namespace": str(AGGREGATE_LOCK_NAMESPACE),
    }


def create_sql(settings: Settings) -> list[str]:
    """The statements (no final ``;``) that install or replace the function."""
    sql = statements("publish.sql")
    values = _values(settings)
    return [_statement(render(sql[name], **values)) for name in ("create", "comment")]


def _statement(text: str) -> str:
    return text.rstrip().removesuffix(";")


def drop_sql(settings: Settings) -> str:
    """The statement (no final ``;``) that removes the function."""
    return _statement(render(statements("publish.sql")["drop"], **_values(settings)))


def expected_body(settings: Settings) -> str:
    """The function body (``pg_proc.prosrc``) the current settings render."""
    create = create_sql(settings)[0]
    start = create.index("$outbox_publish$") + len("$outbox_publish$")
    return create[start:create.rindex("$outbox_publish$")]


def installed_body(conn: psycopg.Connection[Any], settings: Settings) -> str | None:
    """The body of the installed function, or ``None`` if it is not installed."""
    row = conn.execute(statements("publish.sql")["installed_body"], {
        "schema": settings.db_schema, "name": function_name(settings.outbox_table)}).fetchone()
    return None if row is None else str(row[0])


def problems(conn: psycopg.Connection[Any], settings: Settings) -> list[str]:
    """What ``outbox db check`` reports about the function (empty: installed and current)."""
    name = f"{settings.db_schema}.{function_name(settings.outbox_table)}"
    body = installed_body(conn, settings)
    if body is None:
        return [f"function {name}(...) is not installed: run `outbox db upgrade`"]
    if body != expected_body(settings):
        return [f"function {name}(...) was installed with other settings or rules than "
                f"these ({_values(settings)['fingerprint']}): run `outbox db upgrade` with "
                "the settings the writers use"]
    return []


def refresh(conn: psycopg.Connection[Any], settings: Settings) -> bool:
    """Replace an installed function whose body differs from what ``settings`` render;
    True if it was replaced. A database without the function (below 0004) is left alone."""
    body = installed_body(conn, settings)
    if body is None or body == expected_body(settings):
        return False
    for statement in create_sql(settings):
        conn.execute(statement.encode())
    return True


__all__ = ["create_sql", "drop_sql", "expected_body", "function_name", "installed_body",
           "problems", "refresh"]
