"""The CLI's plumbing, in one place: settings flags, logging flags, durations, errors.

    @click.command()
    @settings_options
    def run(settings: Settings) -> None: ...

- every ``OUTBOX_*`` setting has a flag that overrides it (:func:`settings_options`), and
  every command has ``--log-level`` and ``--log-format``;
- every time flag takes one kind of value, :data:`DURATION` (``90`` is 90 seconds);
- whatever a command raises becomes ONE line with an exit code from
  :mod:`outbox.exit_codes`, with the configuration's secrets masked (:func:`cli_error`):
  ``Error: database postgresql://u:***@h/db: password authentication failed ...``.
  Only a bug shows a traceback, and only with ``OUTBOX_TRACEBACK=1``.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar, overload

import click

from outbox.errors import ConfigurationError, OutboxError, ServiceUnavailableError, first_line
from outbox.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_UNAVAILABLE, EXIT_USAGE
from outbox.logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from outbox.settings import Settings, load_settings, redact_url, scrub, secrets_of
from outbox.tracing import configure_from_env

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


# A TCP port to listen on (0: any free one); a value outside is a usage error (exit 2), not
# a bind() failure at start.
PORT = click.IntRange(0, 65535)


def cannot_serve_metrics(host: str, port: int, exc: OSError) -> str:
    """The one line for a /metrics endpoint that cannot listen: where, why, what to change."""
    why = "it is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return (f"cannot serve /metrics on {host}:{port}: {why}; choose another --metrics-port "
            "(or --metrics-host)")


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90`` or ``90s`` (seconds), ``250ms``, ``15m``, ``12h``, ``7d`` -> seconds.

    A bare number is seconds, as in every other time flag of the toolkit.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: use e.g. 90 (seconds), 250ms, 30s, "
                         "15m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``90`` -> ``90s``, ``0.25`` -> ``250ms``: the largest unit that
    divides ``seconds`` exactly (as :func:`parse_duration` reads it)."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _UNITS[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


class Duration(click.ParamType[float]):
    """A click type for :func:`parse_duration`: the value is seconds (a float)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


# --------------------------------------------------------------------------- errors


class CliError(click.ClickException):
    """A one-line CLI error with its exit code (:mod:`outbox.exit_codes`)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click's is a class default


def cli_error(exc: BaseException, settings: Settings | None = None) -> CliError:
    """What ``exc`` means to the person at the terminal: one line and an exit code.

    Configuration problems exit 3, services that do not answer 6, bad arguments 2, and
    anything else 1; secrets of ``settings`` (and any password in a URL) are masked.
    """
    # Imported here: `outbox --help` must not pay for the drivers.
    import psycopg
    import sqlalchemy.exc
    from confluent_kafka import KafkaError, KafkaException

    from outbox import preflight

    def clean(text: str) -> str:
        return scrub(text, settings) if settings is not None else redact_url(text)

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(exc.orig, psycopg.Error):
        exc = exc.orig
    if isinstance(exc, CliError):
        return CliError(clean(exc.format_message()), exc.exit_code)
    if isinstance(exc, click.ClickException):
        return CliError(clean(exc.format_message()), exc.exit_code)
    if isinstance(exc, ConfigurationError):
        return CliError(clean(str(exc)), EXIT_CONFIG)
    if isinstance(exc, ServiceUnavailableError):
        return CliError(clean(str(exc)), EXIT_UNAVAILABLE)
    if isinstance(exc, psycopg.Error) and settings is not None:
        return _database_error(exc, settings, preflight.database_failure)
    if isinstance(exc, KafkaException) and settings is not None:
        error = exc.args[0] if exc.args else None
        detail = error.str() if isinstance(error, KafkaError) else first_line(exc)
        return cli_error(preflight.kafka_failure(detail, settings,
                                                 settings.kafka_bootstrap_servers), settings)
    # (alembic by module: importing it logs its plugin set-up at info level)
    if isinstance(exc, OutboxError | psycopg.Error | KafkaException) or type(
            exc).__module__.startswith("alembic."):
        return CliError(clean(first_line(exc)), EXIT_ERROR)
    if isinstance(exc, sqlalchemy.exc.ArgumentError):
        return CliError(clean(f"database URL: {first_line(exc)}; check OUTBOX_DATABASE_URL "
                              "/ --database-url"), EXIT_CONFIG)
    return CliError(clean(f"unexpected {type(exc).__name__}: {first_line(exc)} (a bug: "
                          "rerun with OUTBOX_TRACEBACK=1 to see where, and report it)"),
                    EXIT_ERROR)


def _database_error(exc: Any, settings: Settings, failure: Callable[..., OutboxError]
                    ) -> CliError:
    """A psycopg error: the connection failed, or a statement did."""
    import psycopg

    line = scrub(first_line(exc), settings)
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return CliError(f"{line}: the database role lacks a privilege this command needs; "
                        "`outbox db roles --sql` prints the grants (docs/operations.md)",
                        EXIT_CONFIG)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return CliError(f"{line}: run `outbox db upgrade` (check --schema / --outbox-table "
                        "/ --inbox-table)", EXIT_CONFIG)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return cli_error(failure(exc, settings), settings)
    return CliError(line, EXIT_ERROR)


def fail(exc: BaseException, settings: Settings | None = None) -> CliError:
    """Turn an error into the one-line CLI error that says what to do (see cli_error)."""
    return cli_error(exc, settings)


def traceback_wanted() -> bool:
    """``OUTBOX_TRACEBACK=1``: show a bug's traceback instead of one line."""
    return os.environ.get("OUTBOX_TRACEBACK", "").lower() in ("1", "true", "yes")


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` unless ``yes`` (``--yes``); refusing (or no answer: a script
    without ``--yes``) stops the command with exit code 2 before anything is done."""
    if yes:
        return
    try:
        agreed = click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input: nobody there to answer
        agreed = False
    if not agreed:
        raise CliError("not confirmed, nothing done (pass --yes to skip the question)",
                       EXIT_USAGE)


# --------------------------------------------------------------------------- the flags


def _parse_kafka_config(pairs: tuple[str, ...]) -> dict[str, str] | None:
    if not pairs:
        return None
    config: dict[str, str] = {}
    for number, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # Not echoed: it may hold a password (sasl.password:secret).
            raise click.BadParameter(
                f"value {number} is not KEY=VALUE (e.g. security.protocol=SASL_SSL)",
                param_hint="--kafka-config")
        config[key.strip()] = value
    return config


def _service_name(command_func: Callable[..., Any]) -> str:
    """The name spans are recorded under: the command as typed (``relay``, ``worker``)."""
    ctx = click.get_current_context(silent=True)
    return (ctx.info_name if ctx is not None and ctx.info_name else
            command_func.__name__.replace("_command", "").replace("_", "-"))


@overload
def settings_options(func: F) -> F: ...


@overload
def settings_options(*, log_format: str = "text", log_level: str = "warning",
                     daemon: bool = False) -> Callable[[F], F]: ...


def settings_options(func: F | None = None, *, log_format: str = "text",
                     log_level: str = "warning", daemon: bool = False
                     ) -> F | Callable[[F], F]:
    """Add the settings and logging flags to a click command and pass it a ready
    ``settings``; errors it raises become one line with an exit code (:func:`cli_error`).

    ``log_format`` / ``log_level`` are the defaults of ``--log-format`` / ``--log-level``
    (a daemon logs JSON at info; a command prints warnings as text). A ``daemon``'s
    rejected settings are one log record in its format (and its exit code), like the
    rest of what it says.
    """
    def decorate(command_func: F) -> F:
        @functools.wraps(command_func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = {field: kwargs.pop(field) for _flag, field, _help in _FLAGS}
            kafka_config = _parse_kafka_config(kwargs.pop("kafka_config"))
            fmt, level = kwargs.pop("log_format"), kwargs.pop("log_level")
            if kafka_config is not None:
                overrides["kafka_config"] = kafka_config
            try:
                settings = load_settings(**overrides)
                configure_from_env(_service_name(command_func))
            except ConfigurationError as exc:
                error = cli_error(exc)
                if not daemon:
                    raise error from None
                configure_logging(fmt, level)
                logging.getLogger("outbox").error(
                    "%s", error.format_message(),
                    extra={"action": "config_error", "exit_code": error.exit_code})
                sys.exit(error.exit_code)
            configure_logging(fmt, level, secrets_of(settings))
            try:
                return command_func(*args, settings=settings, **kwargs)
            except (click.exceptions.Exit, click.exceptions.Abort, SystemExit):
                raise
            except Exception as exc:
                if traceback_wanted():
                    raise
                raise cli_error(exc, settings) from None

        command: Callable[..., Any] = wrapper
        command = click.option(
            "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
            default=log_level, show_default=True,
            help="lowest level of log lines written to stderr")(command)
        command = click.option(
            "--log-format", type=click.Choice(LOG_FORMATS), default=log_format,
            show_default=True, help="log lines as JSON objects or as text")(command)
        command = click.option(
            "--kafka-config", "kafka_config", multiple=True, metavar="KEY=VALUE",
            help="extra librdkafka property, repeatable (SASL/SSL ...) [env "
                 "OUTBOX_KAFKA_CONFIG as a JSON object]")(command)
        for flag, field, help_text in reversed(_FLAGS):
            command = click.option(flag, field, default=None, help=help_text)(command)
        return command  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


__all__ = ["DURATION", "CliError", "Duration", "Settings", "cli_error", "confirm", "fail",
           "format_duration", "parse_duration", "settings_options", "traceback_wanted"]
