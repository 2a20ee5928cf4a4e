"""Shared CLI flags: every ``OUTBOX_*`` setting has a flag that overrides it.

    @click.command()
    @settings_options
    def run(settings: Settings) -> None: ...
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

from outbox.errors import ConfigurationError
from outbox.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# (flag, Settings field, help)
_FLAGS: list[tuple[str, str, str]] = [
    ("--database-url", "database_url", "PostgreSQL URL [env OUTBOX_DATABASE_URL]"),
    ("--kafka-bootstrap-servers", "kafka_bootstrap_servers",
     "Kafka bootstrap servers [env OUTBOX_KAFKA_BOOTSTRAP_SERVERS]"),
    ("--connect-url", "connect_url", "Kafka Connect REST URL [env OUTBOX_CONNECT_URL]"),
    ("--schema", "db_schema", "schema of the toolkit's tables [env OUTBOX_DB_SCHEMA]"),
    ("--outbox-table", "outbox_table", "outbox table name [env OUTBOX_OUTBOX_TABLE]"),
    ("--inbox-table", "inbox_table", "inbox table name [env OUTBOX_INBOX_TABLE]"),
    ("--topic-template", "topic_template",
     "topic per aggregate type [env OUTBOX_TOPIC_TEMPLATE, default {aggregatetype}-events]"),
]


def _parse_kafka_config(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    config: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--kafka-config")
        config[key.strip()] = value
    return config


def settings_options(func: F) -> F:
    """Add the settings flags to a click command and pass it a ready ``settings``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        overrides = {field: kwargs.pop(field) for _flag, field, _help in _FLAGS}
        kafka_config = _parse_kafka_config(kwargs.pop("kafka_config"))
        if kafka_config is not None:
            overrides["kafka_config"] = kafka_config
        try:
            settings = load_settings(**overrides)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        return func(*args, settings=settings, **kwargs)

    command: Callable[..., Any] = wrapper
    command = click.option(
        "--kafka-config", "kafka_config", multiple=True, metavar="KEY=VALUE",
        help="extra librdkafka property, repeatable (SASL/SSL ...) [env OUTBOX_KAFKA_CONFIG "
             "as a JSON object]")(command)
    for flag, field, help_text in reversed(_FLAGS):
        command = click.option(flag, field, default=None, help=help_text)(command)
    return command  # type: ignore[return-value]


def fail(exc: Exception) -> click.ClickException:
    """Turn a toolkit error into a one-line CLI error (exit 1)."""
    return click.ClickException(str(exc))


__all__ = ["Settings", "fail", "settings_options"]
