"""Outbox row -> Kafka record: the one place the record format lives.

The format is pinned in ``../shared/DESIGN.md`` so that the relay and Debezium's outbox
``EventRouter`` emit the same bytes for the same row:

- topic: ``topic_template`` with ``{aggregatetype}`` replaced (default ``{aggregatetype}-events``)
- key: ``aggregateid`` as UTF-8
- value: ``payload`` as compact JSON, UTF-8, keys in the order jsonb stores them (the order
  ``json.loads`` of PostgreSQL's jsonb text returns them); ``None`` for a SQL null payload
- headers: ``id`` (uuid text), ``eventType``, then ``correlationId``, ``causationId``,
  ``traceparent`` only when set, in that order
- timestamp: ``created_at`` (UTC, timestamp without time zone) as epoch milliseconds

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

DEFAULT_TOPIC_TEMPLATE = "{aggregatetype}-events"
_EPOCH = datetime(1970, 1, 1)  # naive: created_at is a UTC timestamp without time zone
_MS = timedelta(milliseconds=1)
# Exactly what json.dumps(payload, separators=(",", ":"), ensure_ascii=False) builds for each
# call; made once because the relay encodes every row (a measurable share of its CPU).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class OutboxRow(NamedTuple):
    """The columns of an outbox row that make up its Kafka record (pinned order)."""

    id: uuid.UUID | str  # the relay reads it as text
    aggregatetype: str
    aggregateid: str
    type: str
    payload: Any
    created_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """What the relay hands to the producer for one outbox row."""

    topic: str
    key: bytes
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int


def topic_for(aggregatetype: str, template: str = DEFAULT_TOPIC_TEMPLATE) -> str:
    """The topic of an aggregate type: ``{aggregatetype}`` in ``template`` replaced.

    Plain replacement, not ``str.format``: an aggregate type containing braces must not be
    able to reach other format fields.
    """
    return template.replace("{aggregatetype}", aggregatetype)


def invalid_topic_reason(topic: str) -> str | None:
    """Why Kafka would refuse ``topic`` as a name, or ``None`` if it is acceptable."""
    if topic in (".", ".."):
        return f"topic name {topic!r} is reserved"
    if not _TOPIC_NAME.match(topic):
        return (f"topic name {topic!r} is invalid: Kafka accepts 1 to 249 characters of "
                "[A-Za-z0-9._-]; check the aggregatetype and the topic template")
    return None


def encode_value(payload: Any) -> bytes | None:
    """``payload`` as compact UTF-8 JSON, key order kept; ``None`` stays ``None``."""
    if payload is None:
        return None
    return _ENCODE(payload).encode()


def timestamp_ms(created_at: datetime) -> int:
    """Epoch milliseconds of a UTC timestamp (naive values are taken as UTC)."""
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    return (created_at - _EPOCH) // _MS


def headers_for(row: OutboxRow) -> list[tuple[str, bytes]]:
    """The record headers of ``row``, in the pinned order; unset optional ones left out."""
    headers = [("id", str(row.id).encode()), ("eventType", row.type.encode())]
    if row.correlation_id is not None:
        headers.append(("correlationId", row.correlation_id.encode()))
    if row.causation_id is not None:
        headers.append(("causationId", row.causation_id.encode()))
    if row.traceparent is not None:
        headers.append(("traceparent", row.traceparent.encode()))
    return headers


def to_record(row: OutboxRow, topic_template: str = DEFAULT_TOPIC_TEMPLATE) -> KafkaRecord:
    """The Kafka record for ``row``, exactly as pinned in DESIGN.md."""
    return KafkaRecord(
        topic=topic_for(row.aggregatetype, topic_template),
        key=row.aggregateid.encode(),
        value=encode_value(row.payload),
        headers=headers_for(row),
        timestamp_ms=timestamp_ms(row.created_at),
    )


__all__ = ["DEFAULT_TOPIC_TEMPLATE", "KafkaRecord", "OutboxRow", "encode_value", "headers_for",
           "invalid_topic_reason", "timestamp_ms", "to_record", "topic_for"]
