"""Start-up checks: is the database reachable and does it let us in; does the broker answer.

A daemon runs these before it calls itself healthy, and every CLI command that talks to
a service runs the one it needs first, so a typo fails at start in one line with an exit
code (:mod:`outbox.exit_codes`) instead of a traceback, a flood of librdkafka lines or an
endless retry. Two kinds of failure, because a supervisor should treat them differently:

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

from outbox.errors import ConfigurationError, ServiceUnavailableError, first_line
from outbox.logs import KAFKA_LOGGER, with_client_logger
from outbox.settings import Settings, scrub

log = logging.getLogger("outbox.preflight")

# Words in libpq's messages that say "this will not work by trying again".
_CONFIG_PROBLEMS = ("invalid", "authentication failed", "does not exist", "failed to resolve",
                    "could not translate host name", "no password supplied",
                    "not permitted", "role", "ssl", "certificate", "permission denied")
# ... and in librdkafka's.
_KAFKA_CONFIG_PROBLEMS = ("resolve", "authentication", "ssl", "sasl", "configuration")

DATABASE_HINT = "check OUTBOX_DATABASE_URL / --database-url"
KAFKA_HINT = "check OUTBOX_KAFKA_BOOTSTRAP_SERVERS / --kafka-bootstrap-servers"


def database_failure(exc: psycopg.Error, settings: Settings,
                     timeout: float | None = None) -> ConfigurationError | ServiceUnavailableError:
    """The one-line error for a failed connection (or statement) to the database: a
    configuration problem, or the server not answering."""
    where = scrub(settings.require_database_url(), settings)
    line = scrub(first_line(exc), settings)
    if isinstance(exc, psycopg.ProgrammingError) or any(
            word in line.lower() for word in _CONFIG_PROBLEMS):
        return ConfigurationError(f"database {where}: {line}; {DATABASE_HINT}")
    within = f" within {timeout:.0f}s" if timeout is not None else ""
    return ServiceUnavailableError(
        f"database {where} did not answer{within}: {line}; is it running? {DATABASE_HINT}")


def check_database(settings: Settings, timeout: float = 5.0) -> None:
    """Connect once and run ``select 1``, or raise the one-line error saying what is wrong."""
    url = settings.libpq_url()
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout)),
                             application_name="outbox-preflight") as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        raise database_failure(exc, settings, timeout) from None


def kafka_failure(detail: str, settings: Settings, servers: str,
                  timeout: float | None = None) -> ConfigurationError | ServiceUnavailableError:
    """The one-line error for a broker that refused or did not answer, from librdkafka's
    own words (``detail``)."""
    detail = scrub(detail, settings)
    if any(word in detail.lower() for word in _KAFKA_CONFIG_PROBLEMS):
        return ConfigurationError(f"Kafka {servers}: {detail}; {KAFKA_HINT} and the "
                                  "security settings (--kafka-config)")
    within = f" within {timeout:.0f}s" if timeout is not None else ""
    return ServiceUnavailableError(
        f"Kafka {servers} did not answer{within}: {detail}; is it running? {KAFKA_HINT}")


def check_kafka(settings: Settings, config: dict[str, Any] | None = None,
                timeout: float = 10.0) -> None:
    """Ask the broker for its metadata within ``timeout``, or raise saying what is wrong.

    ``config`` is the client configuration to check (default: the settings' producer
    configuration), so SASL/SSL properties are exercised as the daemon will use them.
    librdkafka's lines during the check are summed up in the error (its last warning says
    why: cannot resolve, refused, SASL failed) and logged at debug level, not repeated.
    """
    base = dict(config if config is not None else settings.producer_config())
    base.pop("logger", None)
    servers = str(base.get("bootstrap.servers", settings.kafka_bootstrap_servers))
    heard = _Collector()
    logger = logging.getLogger(KAFKA_LOGGER + ".preflight")
    logger.propagate = False
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
                                else first_line(exc))
        for line in heard.lines:
            log.debug("librdkafka: %s", scrub(line, settings),
                      extra={"action": "preflight_kafka_log"})
        raise kafka_failure(detail, settings, servers, timeout) from None
    except (ValueError, TypeError) as exc:  # librdkafka refused a property
        raise ConfigurationError(f"Kafka client configuration: {scrub(str(exc), settings)}; "
                                 "check OUTBOX_KAFKA_CONFIG / --kafka-config") from None
    finally:
        logger.removeHandler(heard)


class _Collector(logging.Handler):
    """Keeps librdkafka's lines, and the text of the last warning-or-worse one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: str | None = None
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # "[thrd:host:9092/bootstrap]: host:9092/bootstrap: Connect to ... failed": the text.
        message = record.getMessage()
        self.lines.append(message)
        if record.levelno >= logging.WARNING:
            text = re.sub(r"^.*?\[thrd:[^\]]*\]:\s*", "", message)
            self.last = re.sub(r"^\S+/\S+:\s*", "", text).strip()


__all__ = ["DATABASE_HINT", "KAFKA_HINT", "check_database", "check_kafka", "database_failure",
           "kafka_failure"]
