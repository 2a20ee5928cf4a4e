"""Start-up checks: is the database reachable and does it let us in; does the broker answer.

A daemon runs these before it calls itself healthy, so a typo fails at start in one line
with an exit code (:mod:`outbox.exit_codes`) instead of a traceback or an endless retry.
Two kinds of failure, because a supervisor should treat them differently:

- :class:`~outbox.errors.ConfigurationError` (exit 3): retrying cannot help — a malformed
  URL, a wrong password, a database or host name that does not exist;
- :class:`~outbox.errors.ServiceUnavailableError` (exit 6): the server did not answer
  within the bound — maybe it is starting; a restart later may succeed.

Messages never carry a secret: they pass through :func:`outbox.settings.scrub`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from outbox.errors import ConfigurationError, ServiceUnavailableError
from outbox.logs import KAFKA_LOGGER, with_client_logger
from outbox.settings import Settings, redact_url, scrub

# Words in libpq's messages that say "this will not work by trying again".
_CONFIG_PROBLEMS = ("invalid", "authentication failed", "does not exist", "failed to resolve",
                    "could not translate host name", "no password supplied",
                    "not permitted", "role", "ssl", "certificate")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_database(settings: Settings, timeout: float = 5.0) -> None:
    """Connect once and run ``select 1``, or raise the one-line error saying what is wrong."""
    url = settings.libpq_url()
    where = scrub(redact_url(url), settings)
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout)),
                             application_name="outbox-preflight") as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        line = scrub(_first_line(exc), settings)
        if isinstance(exc, psycopg.ProgrammingError) or any(
                word in line.lower() for word in _CONFIG_PROBLEMS):
            raise ConfigurationError(f"database {where}: {line}") from None
        raise ServiceUnavailableError(
            f"database {where} did not answer within {timeout:.0f}s: {line}") from None


def check_kafka(settings: Settings, config: dict[str, Any] | None = None,
                timeout: float = 10.0) -> None:
    """Ask the broker for its metadata within ``timeout``, or raise saying what is wrong.

    ``config`` is the client configuration to check (default: the settings' producer
    configuration), so SASL/SSL properties are exercised as the daemon will use them.
    """
    base = dict(config if config is not None else settings.producer_config())
    servers = base.get("bootstrap.servers", settings.kafka_bootstrap_servers)
    # librdkafka says why (cannot resolve, refused, SASL failed) in its log, not in the
    # exception: keep its last warning, and still pass every line on to the toolkit's log.
    heard = _Collector()
    logger = logging.getLogger(KAFKA_LOGGER + ".preflight")
    logger.addHandler(heard)
    try:
        client_config: dict[str, Any] = {**with_client_logger(base), "logger": logger,
                                         "socket.timeout.ms": str(int(timeout * 1000))}
        admin = AdminClient(client_config)
        try:
            admin.list_topics(timeout=timeout)
        finally:
            admin.poll(0)  # delivers the log lines queued meanwhile
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        detail = heard.last or (error.str() if isinstance(error, KafkaError)
                                else _first_line(exc))
        detail = scrub(detail, settings)
        if any(word in detail.lower() for word in ("resolve", "authentication", "ssl",
                                                   "sasl", "configuration")):
            raise ConfigurationError(f"Kafka {servers}: {detail}") from None
        raise ServiceUnavailableError(
            f"Kafka {servers} did not answer within {timeout:.0f}s: {detail}") from None
    except (ValueError, TypeError) as exc:  # librdkafka refused a property
        raise ConfigurationError(f"Kafka client configuration: {scrub(str(exc), settings)}"
                                 ) from None
    finally:
        logger.removeHandler(heard)


class _Collector(logging.Handler):
    """Keeps the text of the last warning-or-worse line librdkafka logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # "[thrd:host:9092/bootstrap]: host:9092/bootstrap: Connect to ... failed": the text.
        text = re.sub(r"^.*?\[thrd:[^\]]*\]:\s*", "", record.getMessage())
        self.last = re.sub(r"^\S+/\S+:\s*", "", text).strip()


__all__ = ["check_database", "check_kafka"]
