"""Incoming Kafka messages: decoding into an :class:`IncomingEvent`, or a poison verdict.

A message is poison when no retry can ever help: its value is not a JSON object, its
``id`` header is missing or not a UUID. Such a message goes to the dead-letter topic at
once, with the reason (``PoisonMessageError.reason``) in its headers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message


class PoisonMessageError(Exception):
    """A message that can never be handled; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(detail)


@dataclass(frozen=True)
class IncomingEvent:
    """An event as a handler sees it."""

    id: uuid.UUID
    type: str
    payload: Mapping[str, Any]
    key: str | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    headers: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def correlation_id(self) -> str | None:
        """The ``correlationId`` header (or payload field), if any."""
        return _text(self.headers.get("correlationId")) or _opt(self.payload.get("correlationId"))

    @property
    def causation_id(self) -> str | None:
        """The ``causationId`` header, if any."""
        return _text(self.headers.get("causationId"))

    @property
    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` header, if any."""
        return _text(self.headers.get("traceparent"))


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def headers_of(msg: Message) -> dict[str, bytes]:
    """A message's headers as a dict (the last value wins for a repeated name)."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    out: dict[str, bytes] = {}
    for name, value in pairs:
        if value is None:
            continue
        out[name] = value.encode() if isinstance(value, str) else bytes(value)
    return out


def decode(msg: Message) -> IncomingEvent:
    """The event carried by ``msg``, or :class:`PoisonMessageError` saying why not."""
    headers = headers_of(msg)
    raw_id = headers.get("id")
    if raw_id is None:
        raise PoisonMessageError("missing-id", "message has no `id` header (the event id)")
    try:
        event_id = uuid.UUID(raw_id.decode())
    except (UnicodeDecodeError, ValueError):
        raise PoisonMessageError(
            "malformed-id", f"`id` header {raw_id[:80]!r} is not a UUID") from None
    value = msg.value()
    if value is None:
        raise PoisonMessageError("empty-value", "message has no value (a tombstone?)")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonMessageError("undecodable-value",
                                 f"value is not UTF-8 JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise PoisonMessageError("undecodable-value",
                                 f"value is JSON {type(payload).__name__}, not an object")
    event_type = _text(headers.get("eventType")) or _opt(payload.get("eventType"))
    if not event_type:
        raise PoisonMessageError("missing-event-type",
                                 "no `eventType` header and no `eventType` field in the value")
    key = msg.key()
    return IncomingEvent(
        id=event_id, type=event_type, payload=payload,
        key=key.decode(errors="replace") if isinstance(key, bytes) else key,
        topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
        timestamp_ms=msg.timestamp()[1], headers=headers)
