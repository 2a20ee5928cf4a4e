"""``outbox connect``: Debezium on Kafka Connect, configured from the toolkit's settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from connect.checks import cdc_findings, slot_lag_bytes
from connect.client import ConnectClient
from connect.config import CONNECTOR_CLASS, CdcOptions, masked, render
from connect.exporter import exporter
from outbox.cli_options import settings_options
from outbox.errors import ConfigurationError
from outbox.settings import Settings, redact_url

F = TypeVar("F", bound=Callable[..., Any])


def cdc_options(func: F) -> F:
    """Flags naming the connector and how Connect reaches the database."""
    func = click.option("--name", default="outbox-connector", show_default=True,
                        help="connector name (also names the slot and publication)")(func)
    func = click.option("--password-ref", default="${env:OUTBOX_DATABASE_PASSWORD}",
                        show_default=True,
                        help="how Connect finds the password: a config-provider reference "
                             "such as ${file:/secrets/pg.properties:password}")(func)
    func = click.option("--database-host", default=None,
                        help="database host as the Connect worker sees it (default: the "
                             "host of the database URL)")(func)
    return func


def _options(name: str, password_ref: str, database_host: str | None) -> CdcOptions:
    return CdcOptions(name=name, password_ref=password_ref, database_host=database_host)


def _render(settings: Settings, options: CdcOptions) -> dict[str, str]:
    return render(settings, options)


def _client(settings: Settings) -> ConnectClient:
    return ConnectClient(settings.connect_url)


@click.group()
def connect() -> None:
    """Debezium's PostgreSQL connector with the outbox router: render, validate, apply ..."""


@connect.command("render")
@cdc_options
@settings_options
def render_command(settings: Settings, name: str, password_ref: str,
                   database_host: str | None) -> None:
    """Print the connector configuration as JSON (secrets masked)."""
    config = _render(settings, _options(name, password_ref, database_host))
    click.echo(json.dumps({"name": name, "config": masked(config)}, indent=2))


@connect.command()
@cdc_options
@settings_options
def validate(settings: Settings, name: str, password_ref: str,
             database_host: str | None) -> None:
    """Ask Kafka Connect to validate the configuration; errors are shown per field."""
    config = _render(settings, _options(name, password_ref, database_host))
    errors = _client(settings).validate(CONNECTOR_CLASS, {**config, "name": name})
    if errors:
        for field, messages in sorted(errors.items()):
            for message in messages:
                click.echo(f"{field}: {message}", err=True)
        raise SystemExit(1)
    click.echo(f"valid: {name} ({CONNECTOR_CLASS})")


@connect.command()
@cdc_options
@settings_options
def apply(settings: Settings, name: str, password_ref: str, database_host: str | None) -> None:
    """Create the connector or update it to the rendered configuration (idempotent)."""
    config = _render(settings, _options(name, password_ref, database_host))
    client = _client(settings)
    current = client.get_config(name)
    if current is not None and {k: v for k, v in current.items() if k != "name"} == config:
        click.echo(f"unchanged: {name}")
        return
    client.put_config(name, config)
    click.echo(f"{'created' if current is None else 'updated'}: {name}")


@connect.command()
@cdc_options
@settings_options
def status(settings: Settings, name: str, password_ref: str, database_host: str | None) -> None:
    """Connector and task state, failure traces, and the replication slot's lag."""
    config = _render(settings, _options(name, password_ref, database_host))
    info = _client(settings).status(name)
    if info is None:
        raise ConfigurationError(f"no connector {name!r} at {redact_url(settings.connect_url)}:"
                                 " run `outbox connect apply` (or check --name)")
    click.echo(f"connector {name}: {info['connector']['state']}")
    failed = info["connector"]["state"] == "FAILED"
    for task in info.get("tasks", []):
        click.echo(f"  task {task['id']}: {task['state']}")
        if task.get("trace"):
            failed = True
            click.echo("    " + task["trace"].strip().splitlines()[0])
    slot = config["slot.name"]
    lag = slot_lag_bytes(settings, slot)
    click.echo(f"slot {slot}: " + ("missing" if lag is None else f"{lag} bytes behind"))
    if failed:
        raise SystemExit(1)


def _simple(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text)
    @click.option("--name", default="outbox-connector", show_default=True)
    @settings_options
    def command(settings: Settings, name: str) -> None:
        client = _client(settings)
        if action == "delete":
            if not client.delete(name):
                raise ConfigurationError(f"no connector {name!r} at "
                                         f"{redact_url(settings.connect_url)} (check --name)")
        else:
            getattr(client, action)(name)
        click.echo(f"{action}: {name}")

    return command


for _action, _help in (("pause", "Pause the connector (the slot keeps WAL meanwhile)."),
                       ("resume", "Resume a paused connector."),
                       ("restart", "Restart the connector and its tasks."),
                       ("delete", "Delete the connector (the replication slot stays: drop it "
                                  "with pg_drop_replication_slot when retiring CDC).")):
    connect.add_command(_simple(_action, _help))


@connect.command()
@cdc_options
@settings_options
def check(settings: Settings, name: str, password_ref: str, database_host: str | None) -> None:
    """Check PostgreSQL's CDC prerequisites for this connector (slot, publication ...)."""
    config = _render(settings, _options(name, password_ref, database_host))
    problems, notes = cdc_findings(settings, config["slot.name"], config["publication.name"])
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo("ok: PostgreSQL is ready for Debezium")


connect.add_command(exporter)
