"""``outbox forward run | check``: deliver events to HTTP endpoints (see consumers.forward).

    outbox forward run --config forward.toml --metrics-port 9102
    outbox forward run --topic order-events --event-type OrderCreated \\
        --url http://legacy:9000/functions/v1/process-inventory \\
        --header 'Authorization: Bearer ${env:LEGACY_TOKEN}' \\
        --body-template '{"orderId": "${payload.orderId}"}'
    outbox forward check --config forward.toml      # validate, print the routes, exit 0 or 3

Route flags define one more route (named by ``--route-name``) next to the file's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from consumers.forward_config import ForwardConfig, build_config, read_file
from outbox.cli_options import DURATION, PORT, cannot_serve_metrics, cli_error, settings_options
from outbox.errors import ConfigurationError, ServiceUnavailableError
from outbox.exit_codes import EXIT_CONFIG, EXIT_UNAVAILABLE
from outbox.preflight import check_database, check_kafka
from outbox.settings import Settings, scrub

log = logging.getLogger("outbox.forward")


def route_options(func: Any) -> Any:
    """The flags shared by ``run`` and ``check``."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
                     help="TOML file with [routes.NAME] tables [env OUTBOX_FORWARD_CONFIG]",
                     envvar="OUTBOX_FORWARD_CONFIG"),
        click.option("--url", default=None, help="endpoint of a route given by flags"),
        click.option("--topic", "topics", multiple=True, help="topic to read (repeatable)"),
        click.option("--event-type", "event_types", multiple=True,
                     help="only these event types (repeatable; default: all)"),
        click.option("--method", default=None, help="POST (default), PUT or PATCH"),
        click.option("--header", "headers", multiple=True, metavar="'NAME: VALUE'",
                     help="request header (repeatable); ${env:NAME} takes a secret from "
                          "the environment"),
        click.option("--body-template", default=None, metavar="JSON",
                     help="request body as a JSON template (default: the event payload)"),
        click.option("--timeout", type=float, default=None, help="seconds per request"),
        click.option("--max-attempts", type=int, default=None,
                     help="attempts before a retryable failure is dead-lettered"),
        click.option("--route-name", default="cli", show_default=True,
                     help="name of the route given by flags (metrics label)"),
        click.option("--group", default=None, help="consumer group [default outbox-forward]"),
        click.option("--workers", type=int, default=None, help="retry worker threads"),
        click.option("--concurrency", type=int, default=None,
                     help="requests in flight at once from the consume loop (other keys)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def load_config(config_path: Path | None, url: str | None, topics: tuple[str, ...],
                event_types: tuple[str, ...], method: str | None, headers: tuple[str, ...],
                body_template: str | None, timeout: float | None, max_attempts: int | None,
                route_name: str, group: str | None, workers: int | None,
                concurrency: int | None) -> ForwardConfig:
    """The file's configuration plus the route and settings given by flags."""
    data: dict[str, Any] = read_file(config_path) if config_path is not None else {}
    source = str(config_path) if config_path is not None else "flags"
    flagged = {"url": url, "topics": list(topics) or None,
               "event_types": list(event_types) or None, "method": method,
               "timeout": timeout, "max_attempts": max_attempts}
    if any(v is not None for v in flagged.values()) or headers or body_template:
        route: dict[str, Any] = {k: v for k, v in flagged.items() if v is not None}
        if headers:
            route["headers"] = dict(_header(h) for h in headers)
        if body_template is not None:
            try:
                route["body"] = json.loads(body_template)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"--body-template is not JSON: {exc}") from None
        routes = dict(data.get("routes") or {})
        if route_name in routes:
            raise ConfigurationError(f"--route-name {route_name!r} is also a route in "
                                     f"{source}: choose another name")
        routes[route_name] = route
        data = {**data, "routes": routes}
        source = f"{source} + flags" if config_path is not None else "flags"
    if group is not None:
        data["group"] = group
    if workers is not None:
        data["workers"] = workers
    if concurrency is not None:
        data["concurrency"] = concurrency
    try:
        return build_config(data, source, dict(os.environ))
    except ConfigurationError as exc:
        raise ConfigurationError(_name_flag(str(exc), source, route_name)) from None


# A problem in the route given by flags names the flag, not the route's field.
FLAG_OF = {"url": "--url", "topics": "--topic", "event_types": "--event-type",
           "method": "--method", "timeout": "--timeout", "max_attempts": "--max-attempts",
           "headers": "--header", "body": "--body-template"}


def _name_flag(message: str, source: str, route_name: str) -> str:
    prefix = f"{source}: routes.{route_name}."
    if not source.endswith("flags") or not message.startswith(prefix):
        return message
    field, _, rest = message[len(prefix):].partition(":")
    flag = FLAG_OF.get(field.split(".", 1)[0])
    return f"{flag}:{rest}" if flag else message


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigurationError(f"--header {name.strip()!r}...: write it as 'NAME: VALUE'")
    return name.strip(), value.strip()


def _check_inbox(settings: Settings) -> None:
    """The inbox exists and this role may use it (consumers.inbox), or the one line."""
    from sqlalchemy import create_engine

    from consumers.inbox import InboxStore

    engine = create_engine(settings.sqlalchemy_url(), connect_args={"connect_timeout": 5})
    try:
        problem = InboxStore(settings).problem(engine)
    finally:
        engine.dispose()
    if problem is not None:
        raise ConfigurationError(problem)


def _stop(code: int, message: str) -> NoReturn:
    """One log line saying why the forwarder cannot start, then exit with ``code``."""
    log.error("%s", message, extra={"action": "config_error" if code == EXIT_CONFIG
                                    else "service_unavailable", "exit_code": code})
    sys.exit(code)


@click.group()
def forward() -> None:
    """Deliver events to existing HTTP endpoints (a consumer with inbox and dead letters)."""


@forward.command()
@route_options
@settings_options(log_format="json", log_level="info", daemon=True)
@click.option("--startup-timeout", type=DURATION, default=10.0, show_default=True,
              help="how long the start-up checks wait for the database and for the broker")
@click.option("--metrics-port", type=PORT, default=None,
              help="serve /metrics and /health on this port (off by default)")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--instance-id", default=None,
              help="static group membership: a restart takes its partitions back at once")
def run(settings: Settings, startup_timeout: float, metrics_port: int | None,
        metrics_host: str, instance_id: str | None, **flags: Any) -> None:
    """Forward until SIGTERM/SIGINT (first: finish the batch, exit 0; second: exit now).

    Before it calls itself healthy it checks the configuration, that the database lets it
    in and has the inbox table, and that the broker answers (--startup-timeout). Exit
    codes: 0 stopped, 1 unexpected error, 3 configuration, 5 fenced (another process with
    this --instance-id), 6 database or broker unavailable at start, 7 a retry worker
    died, 130 second signal.
    """
    from consumers.forward import Forwarder
    from consumers.health import serve
    from consumers.runtime import ConsumerOptions

    try:
        settings.require_database_url()
        config = load_config(**flags)
        check_database(settings, timeout=startup_timeout)
        _check_inbox(settings)
        check_kafka(settings, timeout=startup_timeout)
    except ConfigurationError as exc:
        _stop(EXIT_CONFIG, scrub(str(exc), settings))
    except ServiceUnavailableError as exc:
        _stop(EXIT_UNAVAILABLE, scrub(str(exc), settings))
    except psycopg.Error as exc:
        error = cli_error(exc, settings)
        _stop(error.exit_code, error.format_message())
    forwarder = Forwarder(settings, config, options=ConsumerOptions(
        instance_id=instance_id, startup_timeout=0,  # checked above, with the inbox
        kafka_config={"session.timeout.ms": "10000", "heartbeat.interval.ms": "1000"}))
    if metrics_port is not None:
        try:
            serve(forwarder.consumer.metrics.registry, forwarder.health, metrics_port,
                  metrics_host)
        except OSError as exc:
            _stop(EXIT_CONFIG, cannot_serve_metrics(metrics_host, metrics_port, exc))
    forwarder.consumer.install_signal_handlers()
    sys.exit(forwarder.run())


@forward.command()
@route_options
@settings_options
def check(settings: Settings, **flags: Any) -> None:
    """Validate the configuration and print the routes (secrets masked); exit 0 or 3."""
    config = load_config(**flags)  # a ConfigurationError is one line and exit 3
    click.echo(f"group {config.group}, {config.concurrency} request(s) in flight, "
               f"{config.workers} retry worker(s), park table {config.park_table}")
    for route in config.routes:
        click.echo(json.dumps(route.describe()))
