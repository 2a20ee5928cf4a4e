"""Trigger capture: events from an existing table whose writers cannot change yet.

A capture is a trigger on a business table that publishes an event through the SQL
publish function (``outbox.publish_sql``) for each row inserted, updated and/or deleted,
in the writer's own transaction: the legacy statements stay exactly as they are, a rolled
back write publishes nothing, and the relay or Debezium deliver the events like any other.

Each capture is one function in the toolkit's schema and one trigger on the table, both
named ``<outbox>_capture_<name>``; the capture's definition (this module's
:class:`Capture`, as JSON) is the function's comment, which ``outbox capture list`` reads
and a second ``add`` with the same name replaces. Removing it drops both and leaves the
table as it was. SQL: ``outbox/sql/capture.sql``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from outbox import publish_sql, rules
from outbox.errors import ConfigurationError
from outbox.settings import Settings, qualified, quote_ident
from outbox.sql import literal, render, statements

FORMAT = "outbox-capture/1"
OPERATIONS = ("insert", "update", "delete")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Capture:
    """What a capture publishes, and when."""

    name: str
    table: str  # "schema.table" or "table" (schema public)
    aggregate_type: str
    aggregate_id_column: str
    event_type: str
    operations: tuple[str, ...] = OPERATIONS
    condition: str | None = None  # SQL over `new` and `old`, e.g. new.status = 'RESERVED'
    columns: tuple[str, ...] | None = None  # None: every column
    with_old: bool = False  # payload {"op", "new", "old"} instead of the row's columns
    format: str = field(default=FORMAT)

    @property
    def schema_and_table(self) -> tuple[str, str]:
        schema, _, table = self.table.rpartition(".")
        return schema or "public", table

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Capture:
        data = json.loads(text)
        for key in ("operations", "columns"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def check(capture: Capture, settings: Settings) -> None:
    """Refuse a capture that could never publish: every problem a writer would otherwise
    meet on its first statement (the trigger's error would abort the legacy write)."""
    if not _NAME.match(capture.name):
        raise ConfigurationError(f"capture name {capture.name!r} must be 1 to 40 characters of "
                                 "a-z, 0-9 and _, starting with a letter")
    bad = [op for op in capture.operations if op not in OPERATIONS]
    if bad or not capture.operations:
        raise ConfigurationError(f"capture operations {','.join(capture.operations)!r}: "
                                 f"choose from {', '.join(OPERATIONS)}")
    for what, value in (("aggregate type", capture.aggregate_type),
                        ("event type", capture.event_type)):
        if not value.strip() or len(value) > rules.MAX_FIELD_LENGTH:
            raise ConfigurationError(f"capture {what} {value!r} must be 1 to "
                                     f"{rules.MAX_FIELD_LENGTH} characters")
    problem = rules.topic_problem(capture.aggregate_type, settings.topic_template)
    if problem is not None:
        raise ConfigurationError(f"capture aggregate type {capture.aggregate_type!r} {problem}")


def _names(capture_name: str, settings: Settings) -> tuple[str, str]:
    """(function, trigger) names of a capture."""
    name = f"{settings.outbox_table}_capture_{capture_name}"
    return qualified(settings.db_schema, name), quote_ident(name)


def _row_json(row: str, columns: tuple[str, ...] | None) -> str:
    if columns is None:
        return f"to_jsonb({row})"
    pairs = ", ".join(f"{literal(c)}, {row}.{quote_ident(c)}" for c in columns)
    return f"jsonb_build_object({pairs})"


def install_sql(capture: Capture, settings: Settings,
                previous: Capture | None = None) -> list[str]:
    """The statements that install ``capture`` (replacing ``previous``, same name)."""
    sql = statements("capture.sql")
    function, trigger = _names(capture.name, settings)
    table = qualified(*capture.schema_and_table)
    payload = ("jsonb_build_object('op', lower(tg_op), 'new', new_row, 'old', old_row)"
               if capture.with_old else
               "case when tg_op = 'DELETE' then old_row else new_row end")
    values = {
        "function": function, "trigger": trigger, "table": table,
        "condition": capture.condition or "true",
        "new_payload": _row_json("new", capture.columns),
        "old_payload": _row_json("old", capture.columns),
        "payload": payload,
        "publish": qualified(settings.db_schema, publish_sql.function_name(
            settings.outbox_table)),
        "aggregate_type": literal(capture.aggregate_type),
        "id_column": quote_ident(capture.aggregate_id_column),
        "event_type": literal(capture.event_type),
        "definition": literal(capture.to_json()),
        "operations": " or ".join(capture.operations),
    }
    out = []
    if previous is not None:
        out.append(render(sql["drop_trigger"], **{
            **values, "table": qualified(*previous.schema_and_table)}))
    else:
        out.append(render(sql["drop_trigger"], **values))
    out += [render(sql[name], **values) for name in ("function", "comment", "create_trigger")]
    return [s.rstrip().removesuffix(";") for s in out]


def remove_sql(capture: Capture, settings: Settings) -> list[str]:
    """The statements that remove ``capture`` (trigger, then function)."""
    sql = statements("capture.sql")
    function, trigger = _names(capture.name, settings)
    values = {"function": function, "trigger": trigger,
              "table": qualified(*capture.schema_and_table)}
    return [render(sql[name], **values).rstrip().removesuffix(";")
            for name in ("drop_trigger", "drop_function")]


@dataclass(frozen=True)
class Installed:
    """A capture found in the database, and the tables its trigger is on."""

    capture: Capture | None  # None: the function's comment is not a capture definition
    function: str
    attached_to: str | None


Conn = psycopg.Connection[Any]


def installed(conn: Conn, settings: Settings) -> list[Installed]:
    """Every capture of ``settings``' outbox, from the catalog."""
    prefix = f"{settings.outbox_table}_capture_"
    found = []
    for proname, description, attached in conn.execute(
            statements("capture.sql")["installed"],
            {"schema": settings.db_schema, "prefix": prefix}):
        try:
            capture = Capture.from_json(description) if description else None
        except (ValueError, TypeError):
            capture = None
        found.append(Installed(capture, proname, attached))
    return found


def find(conn: Conn, settings: Settings, name: str) -> Installed | None:
    for item in installed(conn, settings):
        if item.function == f"{settings.outbox_table}_capture_{name}":
            return item
    return None


def _check_against_database(conn: Conn, capture: Capture, settings: Settings) -> None:
    table = qualified(*capture.schema_and_table)
    columns = [r[0] for r in conn.execute(statements("capture.sql")["columns"],
                                          {"table": table})]
    if not columns:
        raise ConfigurationError(f"table {capture.table} does not exist (or has no columns)")
    wanted = [capture.aggregate_id_column, *(capture.columns or ())]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ConfigurationError(f"table {capture.table} has no column {missing[0]!r}; its "
                                 f"columns are {', '.join(columns)}")
    if publish_sql.installed_body(conn, settings) is None:
        raise ConfigurationError(
            f"the publish function {settings.db_schema}."
            f"{publish_sql.function_name(settings.outbox_table)} is not installed: run "
            "`outbox db upgrade`")
    if capture.condition is not None:
        statement = render(statements("capture.sql")["check_condition"], table=table,
                           condition=capture.condition)
        try:
            with conn.transaction():
                conn.execute(statement.encode())
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigurationError(f"capture condition {capture.condition!r} does not work "
                                     f"on {capture.table}: {first}") from None


def add(conn: Conn, capture: Capture, settings: Settings) -> Capture | None:
    """Install ``capture`` in one transaction; returns the capture it replaced, if any."""
    check(capture, settings)
    with conn.transaction():
        _check_against_database(conn, capture, settings)
        existing = find(conn, settings, capture.name)
        previous = existing.capture if existing is not None else None
        for statement in install_sql(capture, settings, previous):
            conn.execute(statement.encode())
    return previous


def remove(conn: Conn, name: str, settings: Settings) -> Capture:
    """Drop capture ``name`` (its trigger, then its function) in one transaction."""
    with conn.transaction():
        existing = find(conn, settings, name)
        if existing is None or existing.capture is None:
            raise ConfigurationError(f"no capture named {name!r} in schema "
                                     f"{settings.db_schema}: see `outbox capture list`")
        for statement in remove_sql(existing.capture, settings):
            conn.execute(statement.encode())
    return existing.capture


__all__ = ["Capture", "Installed", "add", "check", "find", "install_sql", "installed",
           "remove", "remove_sql"]
