"""Logging for every daemon and command: one format, one level check, librdkafka included.

Every toolkit log line carries a stable ``action`` key (in ``extra``), so lines can be
filtered and counted; a line about one event also carries its ``event_id``,
``aggregate_id`` and ``trace_id`` (:func:`event_fields`, :func:`message_fields`), and a
line logged inside an OpenTelemetry span the span's ``trace_id`` (:class:`TraceFilter`).
librdkafka's own log (connection refused, broker down ...) goes through the logger
``outbox.librdkafka`` instead of raw lines on stderr: pass each client's configuration
through :func:`with_client_logger`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from outbox import tracing
from outbox.errors import ConfigurationError
from outbox.settings import redact_url, scrub_secrets

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
KAFKA_LOGGER = "outbox.librdkafka"
# What every line about one event carries (``extra``; see :func:`event_fields`).
EVENT_FIELDS = ("event_id", "aggregate_id", "trace_id")

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
    """Human-readable lines that still carry the ``action`` key, and the event's
    :data:`EVENT_FIELDS` as ``key=value`` when the line is about one event."""

    def format(self, record: logging.LogRecord) -> str:
        action = getattr(record, "action", "-")
        line = f"{self.formatTime(record)} {record.levelname:<7} [{action}] {record.getMessage()}"
        fields = [f"{name}={value}" for name in EVENT_FIELDS
                  if (value := getattr(record, name, None)) is not None]
        if fields:
            line += " (" + " ".join(fields) + ")"
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


class TraceFilter(logging.Filter):
    """Adds the current OpenTelemetry span's ``trace_id`` and ``span_id`` to a line that
    has no ``trace_id`` of its own (a line logged inside a handler's ``process`` span)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None and tracing.available():
            current = tracing.current_traceparent()
            if current is not None:
                record.trace_id, record.span_id = current[3:35], current[36:52]
        return True


def trace_id_of(traceparent: str | bytes | None) -> str | None:
    """The trace id (32 hex digits) of a W3C ``traceparent``, or None."""
    if isinstance(traceparent, bytes):
        traceparent = traceparent.decode("ascii", "replace")
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


def event_fields(event_id: object, aggregate_id: str | bytes | None,
                 traceparent: str | bytes | None) -> dict[str, str | None]:
    """The ``extra`` of a line about one event: :data:`EVENT_FIELDS`."""
    if isinstance(aggregate_id, bytes):
        aggregate_id = aggregate_id.decode("utf-8", "replace")
    return {"event_id": None if event_id is None else str(event_id),
            "aggregate_id": aggregate_id, "trace_id": trace_id_of(traceparent)}


def message_fields(headers: Sequence[tuple[str, bytes | None]] | None,
                   key: str | bytes | None) -> dict[str, str | None]:
    """:func:`event_fields` of a Kafka message: the ``id`` (or ``ce_id``) and
    ``traceparent`` headers, the key as the aggregate id."""
    found: dict[str, bytes | None] = {}
    for name, value in headers or ():
        if name in ("id", "ce_id", "traceparent") and name not in found:
            found[name] = value
    event_id = found.get("id") or found.get("ce_id")
    return event_fields(None if event_id is None else event_id.decode("utf-8", "replace"),
                        key, found.get("traceparent"))


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
    handler.addFilter(TraceFilter())
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


__all__ = ["EVENT_FIELDS", "KAFKA_LOGGER", "LOG_FORMATS", "LOG_LEVELS", "JsonFormatter",
           "SecretFilter", "TextFormatter", "TraceFilter", "check_level", "configure_logging",
           "event_fields", "kafka_logger", "message_fields", "trace_id_of",
           "with_client_logger"]
