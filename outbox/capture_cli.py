"""``outbox capture add | list | remove``: events from tables whose writers cannot change."""

from __future__ import annotations

import click
import psycopg

from outbox import capture as captures
from outbox.cli_options import settings_options
from outbox.settings import Settings


def _connect(settings: Settings) -> psycopg.Connection[tuple[object, ...]]:
    # A failed connection is one line with its exit code (3 or 6) by settings_options.
    return psycopg.connect(settings.libpq_url(), connect_timeout=10, autocommit=True)


def _echo_sql(statements: list[str]) -> None:
    click.echo("begin;")
    for statement in statements:
        click.echo(statement + ";")
    click.echo("commit;")


@click.group()
def capture() -> None:
    """Trigger capture: publish an event for each row a legacy writer changes."""


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


@capture.command()
@click.argument("table")
@click.option("--name", required=True, help="the capture's name (a-z, 0-9, _)")
@click.option("--event-type", required=True, help="the events' type, e.g. OrderReserved")
@click.option("--aggregate-type", required=True, help="routes the topic, e.g. order")
@click.option("--aggregate-id-column", required=True, help="column whose value is the key")
@click.option("--on", "operations", default="insert,update,delete", show_default=True,
              help="which writes publish: insert, update, delete (comma-separated)")
@click.option("--when", "condition", default=None,
              help="SQL condition over new and old, e.g. \"new.status = 'RESERVED' and "
                   "old.status is distinct from new.status\"")
@click.option("--columns", default=None, help="payload columns (comma-separated; default all)")
@click.option("--with-old", is_flag=True,
              help='payload {"op", "new", "old"} (old values on update and delete)')
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead of running it")
@settings_options
def add(settings: Settings, table: str, name: str, event_type: str, aggregate_type: str,
        aggregate_id_column: str, operations: str, condition: str | None,
        columns: str | None, with_old: bool, sql: bool) -> None:
    """Install (or replace) a capture on TABLE ([schema.]table)."""
    spec = captures.Capture(name=name, table=table, aggregate_type=aggregate_type,
                            aggregate_id_column=aggregate_id_column, event_type=event_type,
                            operations=_split(operations) or (), condition=condition,
                            columns=_split(columns), with_old=with_old)
    if sql:
        captures.check(spec, settings)
        _echo_sql(captures.install_sql(spec, settings))
        return
    with _connect(settings) as conn:
        previous = captures.add(conn, spec, settings)
    verb = "replaced" if previous is not None else "installed"
    click.echo(f"{verb} capture {name} on {table}: {'/'.join(spec.operations)} -> "
               f"{event_type} ({aggregate_type}, key {aggregate_id_column})")


@capture.command("list")
@settings_options
def list_(settings: Settings) -> None:
    """Show the installed captures and what they publish."""
    with _connect(settings) as conn:
        found = captures.installed(conn, settings)
    if not found:
        click.echo(f"no captures in schema {settings.db_schema}")
    for item in found:
        c = item.capture
        if c is None:
            click.echo(f"{item.function}: not a capture definition (left alone)")
            continue
        where = item.attached_to or "NOT ATTACHED (run `outbox capture add` again)"
        columns = ",".join(c.columns) if c.columns else "all columns"
        click.echo(f"{c.name}: {where} on {'/'.join(c.operations)}"
                   f"{' when ' + c.condition if c.condition else ''} -> {c.event_type} "
                   f"({c.aggregate_type}, key {c.aggregate_id_column}; payload {columns}"
                   f"{', with old values' if c.with_old else ''})")


@capture.command()
@click.argument("name")
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead of running it")
@settings_options
def remove(settings: Settings, name: str, sql: bool) -> None:
    """Remove capture NAME: its trigger and function; the table is left as it was."""
    with _connect(settings) as conn:
        if sql:
            found = captures.find(conn, settings, name)
            if found is None or found.capture is None:
                raise click.ClickException(f"no capture named {name!r}")
            _echo_sql(captures.remove_sql(found.capture, settings))
            return
        removed = captures.remove(conn, name, settings)
    click.echo(f"removed capture {name} from {removed.table}")
