"""Dead-letter topics: ``{topic}.dlq`` holds what a consumer could not handle.

A dead letter keeps the original key, value and headers, and adds these headers
(all UTF-8 text), so it can be understood and redriven without any other record:

| header | meaning |
|---|---|
| ``dlq.original.topic`` / ``.partition`` / ``.offset`` / ``.timestamp`` | where it came from |
| ``dlq.consumer.group`` | the group that gave up |
| ``dlq.reason`` | ``handler-failed`` or a poison code (below) |
| ``dlq.exception.class`` / ``dlq.exception.message`` | the last error |
| ``dlq.attempts`` | how many times it was tried |
| ``dlq.failed.at`` | when (ISO-8601, UTC) |

Poison codes: ``too-large``, ``unreadable-headers``, ``missing-id``, ``malformed-id``,
``undecodable-value``, ``empty-value``, ``missing-event-type``, ``unknown-event-type``,
``invalid-payload``, ``decode-failed`` (an unexpected error while decoding: a bug).

When the original cannot be written whole — over the consumer's size limit, refused by the
dead-letter topic (its ``max.message.bytes``), or with headers that cannot be read — the
letter is **truncated**: the first :data:`KEEP_VALUE_BYTES` of the value, the first
:data:`KEEP_KEY_BYTES` of the key, the original headers that fit in
:data:`KEEP_HEADER_BYTES`, and three more headers: ``dlq.truncated`` (which of ``value``,
``key``, ``headers`` were cut), ``dlq.original.size`` (the value's length in bytes) and
``dlq.original.sha256`` (the value's hash, hex). If even that is refused, a **bare** letter
carries no original key, value or header, only the diagnostics. A truncated letter cannot
be redriven as it is: find the original by topic, partition and offset.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from confluent_kafka import Message

from consumers.message import RawHeaders, Received, record_size

DLQ_SUFFIX = ".dlq"
PREFIX = "dlq."
MAX_MESSAGE = 2000
KEEP_VALUE_BYTES = 64 * 1024
KEEP_KEY_BYTES = 1024
KEEP_HEADER_BYTES = 16 * 1024
# Every ``dlq.reason`` a consumer writes: the metric's series exist from the start (at 0),
# so an alert on their increase sees the first dead letter too.
REASONS = ("handler-failed", "too-large", "unreadable-headers", "missing-id", "malformed-id",
           "undecodable-value", "empty-value", "missing-event-type", "unknown-event-type",
           "invalid-payload", "decode-failed")


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class Failure:
    """Why a message is being dead-lettered."""

    reason: str
    exception: BaseException
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    """One record to produce to a dead-letter topic."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: RawHeaders
    cut: tuple[str, ...] = ()  # what was truncated: "value", "key", "headers"


def describe(exc: BaseException) -> str:
    """An exception's message, at most :data:`MAX_MESSAGE` characters; never raises."""
    try:
        return str(exc)[:MAX_MESSAGE]
    except Exception:  # a broken __str__ must not stop the dead letter
        return f"<{type(exc).__qualname__} whose message cannot be shown>"


def _diagnostics(msg: Received, group: str, failure: Failure) -> RawHeaders:
    diagnostic = {
        "dlq.original.topic": msg.topic,
        "dlq.original.partition": str(msg.partition),
        "dlq.original.offset": str(msg.offset),
        "dlq.original.timestamp": str(msg.timestamp_ms),
        "dlq.consumer.group": group,
        "dlq.reason": failure.reason,
        "dlq.exception.class": type(failure.exception).__qualname__,
        "dlq.exception.message": describe(failure.exception),
        "dlq.attempts": str(failure.attempts),
        "dlq.failed.at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    return [(k, v.encode("utf-8", "replace")) for k, v in diagnostic.items()]


def _originals(headers: RawHeaders) -> RawHeaders:
    return [(k, v) for k, v in headers if not k.startswith(PREFIX)]


def dead_letter_headers(msg: Received | Message, group: str, failure: Failure) -> RawHeaders:
    """The original headers (all of them, in order) followed by the diagnostic ones.

    Raises the message's :class:`~consumers.message.PoisonMessageError` if its headers
    cannot be read. A confluent-kafka ``Message`` is read once (:meth:`Received.of`).
    """
    if not isinstance(msg, Received):
        msg = Received.of(msg)
    if msg.headers is None:
        raise msg.unreadable or ValueError("headers cannot be read")
    return _originals(msg.headers) + _diagnostics(msg, group, failure)


def full_letter(msg: Received, group: str, failure: Failure) -> DeadLetter:
    """The original record plus diagnostics (raises if its headers cannot be read)."""
    return DeadLetter(dlq_topic(msg.topic), msg.key, msg.value,
                      dead_letter_headers(msg, group, failure))


def _value_facts(value: bytes | None, cut: list[str]) -> RawHeaders:
    data = value or b""
    return [("dlq.truncated", ",".join(cut).encode()),
            ("dlq.original.size", str(len(data)).encode()),
            ("dlq.original.sha256", hashlib.sha256(data).hexdigest().encode())]


def truncated_letter(msg: Received, group: str, failure: Failure) -> DeadLetter:
    """What fits of the original (see the module doc), with its size and hash."""
    key, value = msg.key, msg.value
    cut: list[str] = []
    if value is not None and len(value) > KEEP_VALUE_BYTES:
        value = value[:KEEP_VALUE_BYTES]
        cut.append("value")
    if key is not None and len(key) > KEEP_KEY_BYTES:
        key = key[:KEEP_KEY_BYTES]
        cut.append("key")
    originals = _originals(msg.headers) if msg.headers is not None else None
    kept: RawHeaders = []
    used = 0
    for name, header_value in originals or []:
        used += record_size(None, header_value, [(name, None)])
        if used > KEEP_HEADER_BYTES:
            break
        kept.append((name, header_value))
    if originals is None or len(kept) < len(originals):
        cut.append("headers")
    headers = kept + _diagnostics(msg, group, failure) + _value_facts(msg.value, cut)
    return DeadLetter(dlq_topic(msg.topic), key, value, headers, tuple(cut))


def bare_letter(msg: Received, group: str, failure: Failure) -> DeadLetter:
    """Only the diagnostics, the value's size and hash: nothing of the original."""
    cut = ["value", "key", "headers"]
    headers = _diagnostics(msg, group, failure) + _value_facts(msg.value, cut)
    return DeadLetter(dlq_topic(msg.topic), None, None, headers, tuple(cut))


def strip_diagnostics(headers: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """The original headers of a dead letter, for redrive."""
    return [(k, v) for k, v in headers.items() if not k.startswith(PREFIX)]
