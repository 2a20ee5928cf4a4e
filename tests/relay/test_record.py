"""The pinned Kafka record format (DESIGN.md), as pure functions."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from outbox import rows
from outbox.record import (
    OutboxRow,
    StoredRow,
    compact_json,
    compact_json_many,
    encode_value,
    invalid_topic_reason,
    stored_headers,
    stored_record,
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
    record = to_record(row(traceparent="tp", tracestate="a=1,b=2"))
    assert record.headers[2:] == [("traceparent", b"tp"), ("tracestate", b"a=1,b=2")]


def test_stored_rows_give_the_same_headers_tracestate_included() -> None:
    stored = StoredRow("e-1", "order", "o-1", "Created", "{}", 0, None, None, "tp", "a=1")
    assert stored_headers(stored) == [("id", "e-1"), ("eventType", "Created"),
                                      ("traceparent", "tp"), ("tracestate", "a=1")]
    assert stored_headers(stored._replace(tracestate=None))[2:] == [("traceparent", "tp")]


def test_stored_row_fields_are_the_named_columns_in_order() -> None:
    assert StoredRow._fields == rows.RECORD_FIELDS
    assert [getattr(rows, f.upper()) for f in StoredRow._fields] == list(range(10))


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


# JSON values whose numbers print the same from Python and from jsonb (no floats: jsonb
# prints 1e-07 as 0.0000001; see outbox.record). Strings carry the characters that matter
# to compact_json: quotes, backslashes, the separators with spaces, whitespace, non-ASCII.
_text = st.text(alphabet=st.sampled_from(list('ab "\\,:{}[] \t\n\r/é€\x01\u2028')), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_compact_json_equals_a_json_round_trip(value: object) -> None:
    for spaced in (json.dumps(value, ensure_ascii=False),
                   json.dumps(value, ensure_ascii=False, indent=2)):
        assert compact_json(spaced) == json.dumps(value, ensure_ascii=False,
                                                  separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=6), st.booleans())
def test_compact_json_many_equals_compact_json_of_each(values: list[object],
                                                       indent: bool) -> None:
    texts = [json.dumps(v, ensure_ascii=False, indent=2 if indent else None) for v in values]
    assert compact_json_many(texts) == [
        json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]


def test_compact_json_many_takes_the_fast_path_on_jsonb_text() -> None:
    texts = ['{"a": "x, y: z", "b": [1, 2, {"c": null}]}', '"s p"', "[]", '{"k": true}']
    assert compact_json_many(texts) == ['{"a":"x, y: z","b":[1,2,{"c":null}]}', '"s p"', "[]",
                                        '{"k":true}']


def test_compact_json_of_jsonb_text_matches_the_python_record(pg_url: str) -> None:
    """What the relay sends (jsonb text, compacted) equals to_record's value, for payloads
    full of escapes, and for the stored row as a whole."""
    payloads = [
        {"orderId": "order-42", "total": 12.5, "lines": [{"sku": "a: b, c", "qty": 2}]},
        {"quote\"key": "back\\slash\\", "esc": "\\\"", "ctl": "\x01\t\n", "ü": "€ \u2028"},
        {"z": 1, "a": {"y": [1, 2, None, True, False], "x": {}}, "big": 2 ** 70, "e": []},
        "a bare string", 7, None,
    ]
    created = datetime(2026, 1, 2, 3, 4, 5, 678901)
    with psycopg.connect(pg_url) as conn:
        for payload in payloads:
            stored_text, created_ms = conn.execute(
                "select (%s::jsonb)::text, floor(extract(epoch from %s::timestamp) * 1000)::int8",
                (None if payload is None else Jsonb(payload), created)).fetchone() or (None, 0)
            loaded = None if stored_text is None else json.loads(stored_text)
            expected = to_record(row(payload=loaded, correlation_id="c-1"))
            stored = StoredRow(str(EVENT_ID), "order", "order-42", "OrderCreated", stored_text,
                               created_ms, "c-1")
            assert stored_record(stored) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(_json, min_size=1, max_size=4), st.booleans())
def test_compact_json_many_of_long_texts_equals_compact_json_of_each(
        values: list[object], indent: bool) -> None:
    # Long texts (outbox.record.LONG_TEXT on average) are compacted one by one.
    values = [{"pad": "a b, c: d " * 150, "v": v} for v in values]
    texts = [json.dumps(v, ensure_ascii=False, indent=2 if indent else None) for v in values]
    assert compact_json_many(texts) == [
        json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]
