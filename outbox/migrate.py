"""Apply, inspect and check the toolkit's migrations (the API behind ``outbox db``).

The migrations live in ``outbox/migrations`` and are shipped in the package. They keep
their own version table (:data:`VERSION_TABLE`) in the configured schema and create only
the toolkit's tables, so they can run in any existing database.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, create_engine, pool

from outbox import publish_sql
from outbox.names import relay_cursor_name
from outbox.settings import Settings
from outbox.tables import tables_for

VERSION_TABLE = "outbox_alembic_version"
SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"


def target_metadata(settings: Settings) -> MetaData:
    """The toolkit's tables as models, named by ``settings``."""
    metadata = MetaData()
    tables_for(settings, metadata)
    return metadata


def include_toolkit_objects(settings: Settings,
                            default_schema: str = "public") -> Callable[..., bool]:
    """An Alembic ``include_object`` filter: only the toolkit's tables (of the configured
    schema) and their parts.

    Reflection names tables of the connection's default schema with schema ``None``: they
    are the toolkit's only when the configured schema *is* that default, so a second
    installation in ``public`` is not taken for extra tables of ``Billing``.
    """
    ours = {settings.outbox_table, settings.inbox_table,
            relay_cursor_name(settings.outbox_table)}

    def include(obj: Any, name: str | None, type_: str, reflected: bool,
                compare_to: Any) -> bool:
        if type_ == "table":
            return name in ours and (obj.schema or default_schema) == settings.db_schema
        table = getattr(obj, "table", None)
        return table is None or (table.name in ours and (
            table.schema or default_schema) == settings.db_schema)

    return include


def alembic_config(settings: Settings, connection: Any = None) -> Config:
    """An Alembic ``Config`` for the toolkit's migrations, with ``settings`` attached."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["settings"] = settings
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(settings: Settings, revision: str = "head", sql: bool = False) -> str:
    """Upgrade to ``revision``; with ``sql`` returns the SQL instead of running it.

    An installed publish function whose body the current settings render differently (a
    new topic template or limit) is replaced as well (outbox.publish_sql).
    """
    output = _run(command.upgrade, settings, revision, sql)
    if not sql:
        with psycopg.connect(settings.libpq_url()) as conn:
            publish_sql.refresh(conn, settings)
    return output


def downgrade(settings: Settings, revision: str = "-1", sql: bool = False) -> str:
    """Downgrade to ``revision`` (``-1``: one step, ``base``: remove the tables).

    With ``sql`` the script starts from ``head`` unless ``revision`` is ``FROM:TO``
    (offline, there is no database to ask where it is).
    """
    if sql and ":" not in revision:
        revision = f"head:{revision}"  # offline mode needs an explicit starting point
    return _run(command.downgrade, settings, revision, sql)


_RELATIVE = re.compile(r"^(?P<base>[^+-]*)(?P<step>[+-]\d+)$")
_SYMBOLIC = ("head", "heads", "base")


def revisions() -> list[str]:
    """This toolkit's revisions, oldest first."""
    script = ScriptDirectory(str(SCRIPT_LOCATION))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def known_revision(revision: str) -> bool:
    """Whether ``revision`` names one of this toolkit's revisions: an id, ``head``,
    ``base``, a step (``-1``, ``+2``, ``head-1``), or ``FROM:TO`` of those."""
    if ":" in revision:
        return all(known_revision(part) for part in revision.split(":", 1) if part)
    match = _RELATIVE.match(revision)
    name = match.group("base") if match else revision
    if not name or name in _SYMBOLIC:
        return True
    try:
        return ScriptDirectory(str(SCRIPT_LOCATION)).get_revision(name) is not None
    except CommandError:  # unknown or ambiguous
        return False


def downgrade_target(settings: Settings, revision: str) -> str | None:
    """Where ``downgrade(revision)`` would leave the database: a revision id, or ``None``
    for ``base`` (the tables dropped, with their data)."""
    if revision == "base":
        return None
    match = _RELATIVE.match(revision)
    if match is None or match.group("step").startswith("+"):
        return revision
    name = match.group("base")
    at = current(settings) if not name else head() if name in ("head", "heads") else name
    script = ScriptDirectory(str(SCRIPT_LOCATION))
    for _ in range(int(match.group("step")[1:])):
        if at is None:
            break
        down = script.get_revision(at).down_revision
        at = down if isinstance(down, str) or down is None else down[0]
    return at


def _run(fn: Callable[..., None], settings: Settings, revision: str, sql: bool) -> str:
    config = alembic_config(settings)
    if not sql:
        fn(config, revision)
        return ""
    out = io.StringIO()
    config.output_buffer = out
    with redirect_stdout(io.StringIO()):
        fn(config, revision, sql=True)
    return out.getvalue()


def head() -> str:
    """The newest revision shipped with this version of the toolkit."""
    script = ScriptDirectory(str(SCRIPT_LOCATION))
    current_head = script.get_current_head()
    assert current_head is not None
    return current_head


def current(settings: Settings) -> str | None:
    """The revision the database is at, or ``None`` if the toolkit's tables are not there."""
    engine = create_engine(settings.sqlalchemy_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "version_table": VERSION_TABLE, "version_table_schema": settings.db_schema})
            return ctx.get_current_revision()
    finally:
        engine.dispose()


def check(settings: Settings) -> list[str]:
    """Problems with the database's toolkit schema; an empty list means all is well."""
    at = current(settings)
    if at is None:
        return [f"the toolkit's tables are not installed in schema {settings.db_schema!r}: "
                "run `outbox db upgrade`"]
    problems = []
    if at != head():
        problems.append(f"the database is at revision {at}, this toolkit expects {head()}: "
                        "run `outbox db upgrade`")
    engine = create_engine(settings.sqlalchemy_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "include_schemas": True,
                "include_object": include_toolkit_objects(
                    settings, conn.dialect.default_schema_name or "public"),
                "compare_server_default": False,
            })
            diffs = compare_metadata(ctx, target_metadata(settings))
    finally:
        engine.dispose()
    problems += [f"schema differs from the toolkit's models: {describe(d)}" for d in diffs]
    with psycopg.connect(settings.libpq_url()) as pg:
        problems += publish_sql.problems(pg, settings)
    return problems


def describe(diff: Any) -> str:
    """One line for an Alembic autogenerate difference."""
    if isinstance(diff, list):
        return "; ".join(describe(d) for d in diff)
    kind, *rest = diff
    names = [getattr(r, "name", None) or str(r) for r in rest if r is not None][:3]
    return f"{kind} {' '.join(str(n) for n in names)}"


__all__ = ["VERSION_TABLE", "alembic_config", "check", "current", "downgrade",
           "downgrade_target", "head", "include_toolkit_objects", "known_revision", "revisions",
           "target_metadata", "upgrade"]
