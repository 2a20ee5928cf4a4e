"""Incoming Kafka messages: decoding into an :class:`IncomingEvent`, or a poison verdict.

A message is poison when no retry can ever help: it is larger than the consumer's limit,
its headers cannot be read, its value is not a JSON object (or is nested too deep to
decode), its ``id`` header (or CloudEvents' ``ce_id``) is missing or not a UUID. Such a
message goes to the dead-letter topic at once, with the reason
(``PoisonMessageError.reason``) in its headers.
"""

from __future__ import annotations

import json
import operator
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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

    @property
    def tracestate(self) -> str | None:
        """The W3C ``tracestate`` header, if any."""
        return _text(self.headers.get("tracestate"))


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) else None


RawHeaders = list[tuple[str, bytes | None]]
_HEADERS = operator.methodcaller("headers")  # see raw_headers: never msg.headers()


def raw_headers(msg: Message) -> RawHeaders:
    """A message's headers in order, repeated names included.

    :class:`PoisonMessageError` (``unreadable-headers``) if confluent-kafka cannot read
    them. For a header name that is not UTF-8 (other clients can write one) its C code
    returns a half-built list *with an exception set*: called from Python bytecode that
    CPython has specialised (a hot call site), nothing checks that, the list is returned
    and reading it crashes the process (segfault), or the pending error surfaces later on
    an unrelated line. Called through C (``operator.methodcaller``) the result is checked
    and the call raises ``SystemError`` every time. The half-built list stays cached in
    the message: call this once per message, as :meth:`Received.of` does.
    """
    try:
        raw = _HEADERS(msg) or []
    except Exception as exc:  # SystemError, whatever the client library's version says
        raise PoisonMessageError(
            "unreadable-headers", "the message's headers cannot be read (a header name "
            f"that is not UTF-8?): {type(exc).__name__}") from None
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(name, value.encode() if isinstance(value, str) else value)
            for name, value in pairs]


class Received(NamedTuple):
    """Everything the consumer uses of one Kafka message, read from it once (a tuple:
    built for every message in the hot path)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders | None  # None: they cannot be read (see unreadable)
    unreadable: PoisonMessageError | None = None

    @classmethod
    def of(cls, msg: Message) -> Received:
        """Snapshot ``msg`` (its headers read once, see :func:`raw_headers`)."""
        try:
            headers: RawHeaders | None = raw_headers(msg)
            unreadable = None
        except PoisonMessageError as exc:
            headers, unreadable = None, exc
        key, value = msg.key(), msg.value()
        return cls(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                   msg.timestamp()[1], key.encode() if isinstance(key, str) else key,
                   value.encode() if isinstance(value, str) else value, headers, unreadable)

    @property
    def size(self) -> int:
        """Bytes of key, value and (readable) headers."""
        return record_size(self.key, self.value, self.headers or [])


def record_size(key: bytes | None, value: bytes | None, headers: RawHeaders) -> int:
    """Bytes of a record's key, value, header names and header values."""
    size = len(key or b"") + len(value or b"")
    for name, header_value in headers:
        size += len(name.encode()) + len(header_value or b"")
    return size


def headers_of(msg: Message) -> dict[str, bytes]:
    """A message's headers as a dict (the last value wins for a repeated name)."""
    return _as_dict(raw_headers(msg))


def _as_dict(pairs: RawHeaders) -> dict[str, bytes]:
    return {name: bytes(value) for name, value in pairs if value is not None}


def decode(msg: Received, max_bytes: int | None = None) -> IncomingEvent:
    """The event carried by ``msg``, or :class:`PoisonMessageError` saying why not.

    ``max_bytes``: a message whose key, value and headers add up to more is poison
    (``too-large``) before anything is decoded.
    """
    if msg.unreadable is not None:
        raise msg.unreadable
    pairs = msg.headers or []
    value, key = msg.value, msg.key
    if max_bytes is not None and (size := msg.size) > max_bytes:
        raise PoisonMessageError(
            "too-large", f"message of {size} bytes (key, value and headers) is over the "
            f"consumer's limit of {max_bytes} (ConsumerOptions.max_message_bytes)")
    headers = _as_dict(pairs)
    # the toolkit's header, else CloudEvents' (binary mode: outbox.cloudevents)
    raw_id = headers.get("id") or headers.get("ce_id")
    if raw_id is None:
        raise PoisonMessageError("missing-id", "message has no `id` header (the event id; "
                                               "or CloudEvents' `ce_id`)")
    try:
        event_id = uuid.UUID(raw_id.decode())
    except (UnicodeDecodeError, ValueError):
        raise PoisonMessageError(
            "malformed-id", f"`id` header {raw_id[:80]!r} is not a UUID") from None
    if value is None:
        raise PoisonMessageError("empty-value", "message has no value (a tombstone?)")
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PoisonMessageError("undecodable-value",
                                 f"value is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise PoisonMessageError("undecodable-value", "value is JSON nested too deep to "
                                 "decode (over Python's recursion limit)") from None
    if not isinstance(payload, dict):
        raise PoisonMessageError("undecodable-value",
                                 f"value is JSON {type(payload).__name__}, not an object")
    event_type = (_text(headers.get("eventType")) or _text(headers.get("ce_type"))
                  or _opt(payload.get("eventType")))
    if not event_type:
        raise PoisonMessageError("missing-event-type",
                                 "no `eventType` header and no `eventType` field in the value")
    return IncomingEvent(
        id=event_id, type=event_type, payload=payload,
        key=key.decode(errors="replace") if key is not None else None,
        topic=msg.topic, partition=msg.partition, offset=msg.offset,
        timestamp_ms=msg.timestamp_ms, headers=headers)
