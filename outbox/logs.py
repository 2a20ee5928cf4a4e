"""Logging for every daemon and command: one format, one level check, librdkafka included.

Every toolkit log line carries a stable ``action`` key (in ``extra``), so lines can be
filtered and counted. librdkafka's own log (connection refused, broker down ...) goes
through the logger ``outbox.librdkafka`` instead of raw lines on stderr: pass each client's
configuration through :func:`with_client_logger`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from outbox.errors import ConfigurationError
from outbox.settings import redact_url, scrub_secrets

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
KAFKA_LOGGER = "outbox.librdkafka"

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, message, and every ``extra`` (``action`` ...)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        data.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            data["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines that still carry the ``action`` key."""

    def format(self, record: logging.LogRecord) -> str:
        action = getattr(record, "action", "-")
        line = f"{self.formatTime(record)} {record.levelname:<7} [{action}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + (record.exc_text or self.formatException(record.exc_info))
        return line


class SecretFilter(logging.Filter):
    """Masks passwords in every line before it is written: those written into URLs or
    keyword strings (:func:`outbox.settings.redact_url`) and the configuration's own
    secrets (``secrets``, from :func:`outbox.settings.secrets_of`), in the message and in
    an attached exception's text. The last line of defence: messages should not carry
    secrets in the first place."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def _clean(self, text: str) -> str:
        return scrub_secrets(redact_url(text), self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self._clean(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


def check_level(level: str) -> str:
    """``level`` lower-cased if it is a log level, else a one-line :class:`ConfigurationError`."""
    value = level.strip().lower()
    if value not in LOG_LEVELS:
        raise ConfigurationError(
            f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def configure_logging(fmt: str = "json", level: str = "info",
                      secrets: Sequence[str] = ()) -> None:
    """Send every log line (the toolkit's and librdkafka's) to stderr in ``fmt``, with
    passwords and ``secrets`` masked (:class:`SecretFilter`)."""
    if fmt not in LOG_FORMATS:
        raise ConfigurationError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    # Replaces the toolkit's own handler of an earlier call (a command run in-process
    # by a test, say), leaves others alone.
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(handler)
    root.setLevel(check_level(level).upper())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is written (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def kafka_logger() -> logging.Logger:
    """The logger librdkafka's own lines go to (``outbox.librdkafka``)."""
    return logging.getLogger(KAFKA_LOGGER)


def with_client_logger(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` plus ``logger``: a confluent-kafka client built from it logs through
    :func:`kafka_logger` (delivered on the client's ``poll()``) instead of writing raw
    lines to stderr."""
    return {**config, "logger": kafka_logger()}


__all__ = ["KAFKA_LOGGER", "LOG_FORMATS", "LOG_LEVELS", "JsonFormatter", "SecretFilter",
           "TextFormatter",
           "check_level", "configure_logging", "kafka_logger", "with_client_logger"]
