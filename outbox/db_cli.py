"""``outbox db``: add the toolkit's tables to a database, inspect and check them."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click
import sqlalchemy.exc

from outbox import migrate
from outbox.cli_options import settings_options
from outbox.errors import OutboxError
from outbox.settings import Settings, redact_url


def _database_error(settings: Settings, exc: Exception) -> click.ClickException:
    if isinstance(exc, OutboxError):  # our own errors are already one clear line
        return click.ClickException(str(exc))
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return click.ClickException(
        f"database {redact_url(settings.libpq_url())}: {first}")


@click.group()
def db() -> None:
    """Migrations: add the outbox and inbox tables to an existing database."""


@db.command()
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead of running it")
@settings_options
def upgrade(settings: Settings, revision: str, sql: bool) -> None:
    """Create or upgrade the toolkit's tables (only those; nothing else is touched)."""
    _migrate(migrate.upgrade, settings, revision, sql)


@db.command()
@click.argument("revision", default="-1")
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead of running it")
@settings_options
def downgrade(settings: Settings, revision: str, sql: bool) -> None:
    """Step back (default one revision; `base` drops the toolkit's tables and their data)."""
    _migrate(migrate.downgrade, settings, revision, sql)


def _migrate(step: Callable[..., str], settings: Settings, revision: str, sql: bool) -> None:
    """Run an upgrade or downgrade (or print its SQL) and say where the database is now."""
    try:
        output = step(settings, revision, sql=sql)
        if sql:
            click.echo(output, nl=False)
        else:
            click.echo(f"{settings.db_schema}: at revision {migrate.current(settings) or 'base'}")
    except (sqlalchemy.exc.SQLAlchemyError, OutboxError) as exc:
        raise _database_error(settings, exc) from None


@db.command()
@settings_options
def current(settings: Settings) -> None:
    """Print the revision the database is at (`none` if the tables are not installed)."""
    try:
        click.echo(migrate.current(settings) or "none")
    except (sqlalchemy.exc.SQLAlchemyError, OutboxError) as exc:
        raise _database_error(settings, exc) from None


@db.command()
@click.option("--cdc", is_flag=True,
              help="also check what Debezium needs: wal_level, permissions, slot, publication")
@settings_options
def check(settings: Settings, cdc: bool) -> None:
    """Exit 0 if the tables are installed, current and match the models; else say what to fix."""
    try:
        problems = migrate.check(settings)
        notes: list[str] = []
        if cdc:
            cdc_problems, notes = _cdc_findings(settings)
            problems += cdc_problems
    except (sqlalchemy.exc.SQLAlchemyError, OutboxError) as exc:
        raise _database_error(settings, exc) from None
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {settings.db_schema}.{settings.outbox_table} and "
               f"{settings.db_schema}.{settings.inbox_table} at revision {migrate.head()}"
               + (", CDC prerequisites met" if cdc else ""))


def _cdc_findings(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, advisory notes) of the CDC prerequisites check."""
    try:
        checks = importlib.import_module("connect.checks")
    except ModuleNotFoundError:
        return ["CDC checks are not available in this build (connect.checks is missing)"], []
    problems, notes = checks.cdc_findings(settings)
    return list(problems), list(notes)
