"""``outbox db``: add the toolkit's tables to a database, inspect and check them."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from outbox import migrate
from outbox.cli_options import confirm, settings_options
from outbox.settings import Settings


def _revision(revision: str) -> str:
    """``revision`` if this toolkit knows it, else a usage error listing those it does."""
    if not migrate.known_revision(revision):
        raise click.BadParameter(
            f"{revision!r} is not a revision of this toolkit: use one of base, "
            f"{', '.join(migrate.revisions())}, head, or a step such as -1",
            param_hint="REVISION")
    return revision


@click.group()
def db() -> None:
    """Migrations: add the outbox and inbox tables to an existing database."""


# A relative revision (-1) is an argument, not an unknown option.
_REVISION_ARGS = {"ignore_unknown_options": True}


@db.command(context_settings=_REVISION_ARGS)
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead of running it")
@settings_options
def upgrade(settings: Settings, revision: str, sql: bool) -> None:
    """Create or upgrade the toolkit's tables (only those; nothing else is touched)."""
    _migrate(migrate.upgrade, settings, _revision(revision), sql)


@db.command(context_settings=_REVISION_ARGS)
@click.argument("revision", default="-1")
@click.option("--sql", is_flag=True,
              help="print the SQL for a DBA instead of running it (from head, or give "
                   "FROM:TO)")
@click.option("--yes", "-y", is_flag=True,
              help="do not ask before dropping the tables (a downgrade past the first "
                   "revision deletes every outbox and inbox row)")
@settings_options
def downgrade(settings: Settings, revision: str, sql: bool, yes: bool) -> None:
    """Step back (default one revision; `base` drops the toolkit's tables and their data)."""
    _revision(revision)
    if not sql and migrate.downgrade_target(settings, revision) is None:
        confirm(f"downgrading to base drops {settings.db_schema}.{settings.outbox_table} and "
                f"{settings.db_schema}.{settings.inbox_table} with every row in them; "
                "continue?", yes)
    _migrate(migrate.downgrade, settings, revision, sql)


def _migrate(step: Callable[..., str], settings: Settings, revision: str, sql: bool) -> None:
    """Run an upgrade or downgrade (or print its SQL) and say where the database is now."""
    output = step(settings, revision, sql=sql)
    if sql:
        click.echo(output, nl=False)
    else:
        click.echo(f"{settings.db_schema}: at revision {migrate.current(settings) or 'base'}")


@db.command()
@settings_options
def current(settings: Settings) -> None:
    """Print the revision the database is at (`none` if the tables are not installed)."""
    click.echo(migrate.current(settings) or "none")


@db.command()
@click.option("--cdc", is_flag=True,
              help="also check what Debezium needs: wal_level, permissions, slot, publication")
@settings_options
def check(settings: Settings, cdc: bool) -> None:
    """Exit 0 if the tables are installed, current and match the models; else say what to fix."""
    problems = migrate.check(settings)
    notes: list[str] = []
    if cdc:
        cdc_problems, notes = _cdc_findings(settings)
        problems += cdc_problems
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if problems:
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        raise SystemExit(1)
    click.echo(f"ok: {settings.db_schema}.{settings.outbox_table} and "
               f"{settings.db_schema}.{settings.inbox_table} at revision {migrate.head()}"
               + (", CDC prerequisites met" if cdc else ""))


@db.command()
@click.option("--sql", is_flag=True, help="print the SQL (for a DBA) instead of running it")
@click.option("--role-prefix", default="outbox", show_default=True,
              help="roles are named PREFIX_migrator, PREFIX_writer, PREFIX_relay, "
                   "PREFIX_consumer and PREFIX_cdc")
@click.option("--connector-name", default="outbox-connector", show_default=True,
              help="the Debezium connector (`outbox connect --name`) whose publication "
                   "the CDC role reads")
@click.option("--step", type=click.Choice(["roles", "grants", "publication", "all"]),
              default="all",
              show_default=True,
              help="roles: roles and schema (before `db upgrade`); grants: table "
                   "privileges (after it); publication: Debezium's (CDC only)")
@settings_options
def roles(settings: Settings, sql: bool, role_prefix: str, connector_name: str,
          step: str) -> None:
    """Least-privilege roles for writers, the relay, consumers, migrations and CDC.

    Without --sql the SQL runs on the database (as a superuser, or a role with CREATEROLE
    that owns the toolkit's tables). docs/operations.md explains each role.
    """
    from connect.config import slot_name
    from outbox import roles as role_sql

    # The connector's publication is named like its slot (connect.config.render).
    blocks = role_sql.render_steps(settings, role_sql.RoleNames(role_prefix),
                                   slot_name(connector_name))
    chosen = [blocks[name] for name in role_sql.STEPS if step in (name, "all")]
    if sql:
        click.echo("\n".join(chosen), nl=False)
        return
    import psycopg

    with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
        for block in chosen:
            conn.execute(block.encode())
    click.echo(f"roles {', '.join(f'{role_prefix}_{k}' for k in role_sql.KINDS)}: "
               f"{', '.join(s for s in role_sql.STEPS if step in (s, 'all'))} applied")


def _cdc_findings(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, advisory notes) of the CDC prerequisites check."""
    try:
        checks = importlib.import_module("connect.checks")
    except ModuleNotFoundError:
        return ["CDC checks are not available in this build (connect.checks is missing)"], []
    problems, notes = checks.cdc_findings(settings)
    return list(problems), list(notes)
