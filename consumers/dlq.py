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

Poison codes: ``missing-id``, ``malformed-id``, ``undecodable-value``, ``empty-value``,
``missing-event-type``, ``unknown-event-type``, ``invalid-payload``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from confluent_kafka import Message

from consumers.message import headers_of

DLQ_SUFFIX = ".dlq"
PREFIX = "dlq."
MAX_MESSAGE = 2000


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class Failure:
    """Why a message is being dead-lettered."""

    reason: str
    exception: BaseException
    attempts: int


def dead_letter_headers(msg: Message, group: str, failure: Failure) -> list[tuple[str, bytes]]:
    """The original headers followed by the diagnostic ones."""
    original = [(k, v) for k, v in headers_of(msg).items() if not k.startswith(PREFIX)]
    text = str(failure.exception)[:MAX_MESSAGE]
    diagnostic = {
        "dlq.original.topic": msg.topic() or "",
        "dlq.original.partition": str(msg.partition()),
        "dlq.original.offset": str(msg.offset()),
        "dlq.original.timestamp": str(msg.timestamp()[1]),
        "dlq.consumer.group": group,
        "dlq.reason": failure.reason,
        "dlq.exception.class": type(failure.exception).__qualname__,
        "dlq.exception.message": text,
        "dlq.attempts": str(failure.attempts),
        "dlq.failed.at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }
    return original + [(k, v.encode("utf-8", "replace")) for k, v in diagnostic.items()]


def strip_diagnostics(headers: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """The original headers of a dead letter, for redrive."""
    return [(k, v) for k, v in headers.items() if not k.startswith(PREFIX)]
