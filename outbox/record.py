"""Outbox row -> Kafka record: the one place the record format lives.

The format is pinned (docs/contracts.md) so that the relay and Debezium's outbox
``EventRouter`` emit the same bytes for the same row:

- topic: ``topic_template`` with ``{aggregatetype}`` replaced (default ``{aggregatetype}-events``)
- key: ``aggregateid`` as UTF-8
- value: ``payload`` as compact JSON, UTF-8: PostgreSQL's jsonb text with the whitespace
  between tokens removed (:func:`compact_json`), so keys keep jsonb's order and numbers
  print as jsonb prints them; ``None`` for a SQL null payload
- headers: ``id`` (uuid text), ``eventType``, then ``correlationId``, ``causationId``,
  ``traceparent``, ``tracestate`` only when set, in that order
- timestamp: ``created_at`` (UTC, timestamp without time zone) as epoch milliseconds

Two entry points build the same record: :func:`stored_record_parts` from a row as the relay
and replay read it (:class:`StoredRow`: payload as jsonb text, ``created_at`` as epoch
milliseconds; the fast path, nothing parsed), and :func:`to_record` from Python values.
They agree except that :func:`to_record` prints floats as Python does (``1e-07``), where
jsonb prints ``0.0000001``.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, NamedTuple

from outbox.rows import (
    AGGREGATEID,
    CAUSATION_ID,
    CORRELATION_ID,
    CREATED_MS,
    ID,
    PAYLOAD,
    TRACEPARENT,
    TRACESTATE,
    TYPE,
)

DEFAULT_TOPIC_TEMPLATE = "{aggregatetype}-events"
_EPOCH = datetime(1970, 1, 1)  # naive: created_at is a UTC timestamp without time zone
_MS = timedelta(milliseconds=1)
# Exactly what json.dumps(payload, separators=(",", ":"), ensure_ascii=False) builds for each
# call; made once because the relay encodes every row (a measurable share of its CPU).
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


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
    tracestate: str | None = None


class StoredRow(NamedTuple):
    """An outbox row as the relay and replay read it: the columns of :mod:`outbox.rows`
    (selected by ``outbox.rows.RECORD_COLUMNS``), in its order."""

    id: str
    aggregatetype: str
    aggregateid: str
    type: str
    payload: str | None  # jsonb's text output
    created_ms: int  # created_at as epoch milliseconds
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None  # schema version 6


# (key, value, headers, timestamp_ms) as confluent-kafka's produce() takes them: str is
# sent as UTF-8, so nothing is encoded in Python.
RecordParts = tuple[str, str | None, list[tuple[str, str]], int]


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
    if not _TOPIC_NAME.fullmatch(topic):  # fullmatch: `$` would accept a final newline
        return (f"topic name {topic!r} is invalid: Kafka accepts 1 to 249 characters of "
                "[A-Za-z0-9._-]; check the aggregatetype and the topic template")
    return None


def encode_value(payload: Any) -> bytes | None:
    """``payload`` as compact UTF-8 JSON, key order kept; ``None`` stays ``None``."""
    if payload is None:
        return None
    return _ENCODE(payload).encode()


def compact_json_python(text: str) -> str:
    """JSON text without whitespace between tokens; strings and numbers untouched.

    For PostgreSQL's jsonb output (``", "`` and ``": "`` between tokens) this is the
    compact form, ~2.5x cheaper than ``json.loads`` + ``json.dumps``. Text with no
    backslash has no escaped quote, so every ``"`` opens or closes a string and the pieces
    between them alternate outside/inside; otherwise each quote is checked for escaping.
    Pieces outside strings hold only punctuation, numbers, literals and whitespace.
    """
    if "\\" not in text and text.isprintable():
        # No escapes and no whitespace but spaces: what jsonb prints for most payloads.
        parts = text.split('"')
        parts[::2] = [part.replace(" ", "") for part in parts[::2]]
        return '"'.join(parts)
    out = []
    inside = False
    for part in text.split('"'):
        if inside:
            out.append(part)
            # The quote after this piece closes the string unless it is escaped, i.e.
            # preceded by an odd number of backslashes.
            if (len(part) - len(part.rstrip("\\"))) % 2 == 0:
                inside = False
        else:
            out.append("".join(part.split()))
            inside = True
    return '"'.join(out)


# compact_json_many: above this average length, one text at a time is cheaper.
LONG_TEXT = 1000


def compact_json_many_python(texts: list[str]) -> list[str]:
    """:func:`compact_json` of each text, in a handful of C-level string operations for
    the whole list instead of a Python loop per text (the relay's batch path).

    The texts are joined with ``\x01`` (never raw in JSON text: control characters inside
    strings are escaped), split at quotes, and the pieces outside strings (every other
    one) are joined with ``\x00``, stripped of spaces and split again. That is only right
    when no quote is escaped and spaces are the only whitespace between tokens, as in
    jsonb's output without backslashes; otherwise each text goes through compact_json.
    Long texts (over LONG_TEXT characters on average) go through compact_json one by one
    too: joining and splitting again copies every byte twice more, which costs more than
    the per-text loop saves (10 KB payloads: 13.9 against 5.8 µs a text).
    """
    if not texts:
        return []
    if sum(map(len, texts)) > LONG_TEXT * len(texts):
        return [_compact_long(text) for text in texts]
    joined = "\x01".join(texts)
    if ("\\" in joined or "\n" in joined or "\t" in joined or "\r" in joined
            or "\x00" in joined or joined.count("\x01") != len(texts) - 1):
        return [compact_json_python(text) for text in texts]
    parts = joined.split('"')
    parts[::2] = "\x00".join(parts[::2]).replace(" ", "").split("\x00")
    return '"'.join(parts).split("\x01")


def _compact_long(text: str) -> str:
    """compact_json_many's per-text path: the same conditions as its joined path."""
    if "\\" in text or "\n" in text or "\t" in text or "\r" in text:
        return compact_json_python(text)
    parts = text.split('"')
    parts[::2] = [part.replace(" ", "") for part in parts[::2]]
    return '"'.join(parts)


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
    if row.tracestate is not None:
        headers.append(("tracestate", row.tracestate.encode()))
    return headers


def stored_headers(row: StoredRow) -> list[tuple[str, str]]:
    """The record headers of a stored row, in the pinned order, as text."""
    headers = [("id", row[ID]), ("eventType", row[TYPE])]
    if row[CORRELATION_ID] is not None:
        headers.append(("correlationId", row[CORRELATION_ID]))
    if row[CAUSATION_ID] is not None:
        headers.append(("causationId", row[CAUSATION_ID]))
    if row[TRACEPARENT] is not None:
        headers.append(("traceparent", row[TRACEPARENT]))
    if row[TRACESTATE] is not None:
        headers.append(("tracestate", row[TRACESTATE]))
    return headers


def _speedups() -> ModuleType | None:
    """The C versions of the two compacting functions above (outbox/_speedups.c), unless
    the extension was not built (no compiler at install) or ``OUTBOX_SPEEDUPS=0``."""
    if os.environ.get("OUTBOX_SPEEDUPS", "1") == "0":
        return None
    try:
        return importlib.import_module("outbox._speedups")
    except ImportError:
        return None


# The relay's compacting: the C functions when built (the same results, checked by
# tests/relay/test_speedups.py; at 200 B payloads 3.3 against 0.45 µs a payload), else the
# Python ones.
SPEEDUPS = _speedups()
compact_json: Callable[[str], str] = compact_json_python
compact_json_many: Callable[[list[str]], list[str]] = compact_json_many_python
if SPEEDUPS is not None:
    compact_json = SPEEDUPS.compact_json
    compact_json_many = SPEEDUPS.compact_json_many


def stored_record_parts(row: StoredRow) -> RecordParts:
    """Key, value, headers and timestamp of a stored row."""
    payload = row[PAYLOAD]
    return (row[AGGREGATEID], None if payload is None else compact_json(payload),
            stored_headers(row), row[CREATED_MS])


def stored_record(row: StoredRow, topic_template: str = DEFAULT_TOPIC_TEMPLATE) -> KafkaRecord:
    """The Kafka record of a stored row (what the relay sends, as bytes)."""
    key, value, headers, ts = stored_record_parts(row)
    return KafkaRecord(topic=topic_for(row.aggregatetype, topic_template), key=key.encode(),
                       value=None if value is None else value.encode(),
                       headers=[(k, v.encode()) for k, v in headers], timestamp_ms=ts)


def to_record(row: OutboxRow, topic_template: str = DEFAULT_TOPIC_TEMPLATE) -> KafkaRecord:
    """The Kafka record for ``row``, exactly as pinned in DESIGN.md."""
    return KafkaRecord(
        topic=topic_for(row.aggregatetype, topic_template),
        key=row.aggregateid.encode(),
        value=encode_value(row.payload),
        headers=headers_for(row),
        timestamp_ms=timestamp_ms(row.created_at),
    )


__all__ = ["DEFAULT_TOPIC_TEMPLATE", "SPEEDUPS", "KafkaRecord", "OutboxRow", "RecordParts",
           "StoredRow", "compact_json", "compact_json_many", "compact_json_many_python",
           "compact_json_python", "encode_value", "headers_for", "invalid_topic_reason",
           "stored_record", "stored_record_parts", "timestamp_ms", "to_record", "topic_for"]
