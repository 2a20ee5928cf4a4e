"""The pinned Kafka record format (DESIGN.md), as pure functions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from outbox.record import (
    OutboxRow,
    encode_value,
    invalid_topic_reason,
    timestamp_ms,
    to_record,
    topic_for,
)

EVENT_ID = uuid.UUID("0190b5a4-7c1e-7d2a-8f00-0123456789ab")


def row(**changes: object) -> OutboxRow:
    base = OutboxRow(id=EVENT_ID, aggregatetype="order", aggregateid="order-42",
                     type="OrderCreated", payload={"orderId": "order-42", "total": 12.5},
                     created_at=datetime(2026, 1, 2, 3, 4, 5, 678901))
    return base._replace(**changes)  # type: ignore[arg-type]


def test_record_has_the_pinned_topic_key_value_headers_and_timestamp() -> None:
    record = to_record(row())
    assert record.topic == "order-events"
    assert record.key == b"order-42"
    assert record.value == b'{"orderId":"order-42","total":12.5}'
    assert record.headers == [("id", b"0190b5a4-7c1e-7d2a-8f00-0123456789ab"),
                              ("eventType", b"OrderCreated")]
    # 2026-01-02T03:04:05.678901Z, truncated to the millisecond
    assert record.timestamp_ms == 1767323045678


def test_optional_headers_come_in_pinned_order_only_when_set() -> None:
    record = to_record(row(correlation_id="c-1", traceparent="00-abc-def-01"))
    assert [k for k, _ in record.headers] == ["id", "eventType", "correlationId", "traceparent"]
    record = to_record(row(correlation_id="c-1", causation_id="e-0", traceparent="tp"))
    assert record.headers[2:] == [("correlationId", b"c-1"), ("causationId", b"e-0"),
                                  ("traceparent", b"tp")]


def test_value_is_compact_utf8_and_keeps_key_order() -> None:
    payload = {"z": 1, "a": {"ü": "€", "list": [1, 2, None, True]}}
    assert encode_value(payload) == '{"z":1,"a":{"ü":"€","list":[1,2,null,true]}}'.encode()
    assert encode_value(None) is None
    assert to_record(row(payload=None)).value is None


def test_topic_template_replaces_only_the_aggregatetype_field() -> None:
    assert topic_for("order") == "order-events"
    assert topic_for("payment", "prod.{aggregatetype}.v1") == "prod.payment.v1"
    assert topic_for("{0}x", "{aggregatetype}-events") == "{0}x-events"


@pytest.mark.parametrize("name", ["bad topic", "a/b", "", ".", "..", "x" * 250, "é"])
def test_invalid_topic_names_are_explained(name: str) -> None:
    reason = invalid_topic_reason(name)
    assert reason is not None and repr(name) in reason


def test_timestamp_handles_naive_utc_and_aware_values() -> None:
    naive = datetime(1970, 1, 1, 0, 0, 1, 500)
    assert timestamp_ms(naive) == 1000
    assert timestamp_ms(datetime(2026, 1, 1, tzinfo=UTC)) == timestamp_ms(datetime(2026, 1, 1))


def test_jsonb_key_order_survives_the_round_trip(pg_url: str) -> None:
    """The value keeps jsonb's own key order (shorter keys first), as Debezium emits it."""
    with psycopg.connect(pg_url) as conn:
        loaded = conn.execute(
            """select '{"bb": 1, "a": [1, 2], "ccc": {"y": 1, "x": 2}}'::jsonb""").fetchone()
        text = conn.execute(
            """select '{"bb": 1, "a": [1, 2], "ccc": {"y": 1, "x": 2}}'::jsonb::text""").fetchone()
    assert loaded is not None and text is not None
    assert encode_value(loaded[0]) == b'{"a":[1,2],"bb":1,"ccc":{"x":2,"y":1}}'
    assert encode_value(loaded[0]) == text[0].replace(", ", ",").replace(": ", ":").encode()
