"""What publish() and the SQL function accept can be delivered (issue: stored but stuck).

Against the real broker with its defaults and the relay's producer with librdkafka's: a
record at the default limit is delivered, one byte more is refused at publish time with
the field named; a row written around the rules is parked by the relay, not sent.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from outbox import publish_sql
from outbox.errors import EventValidationError, PayloadTooLargeError
from outbox.publish import Event, publish
from outbox.rules import DEFAULT_MAX_RECORD_BYTES
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions
from tests.harness.kafka import consume_all, create_topic

# Record bytes besides the payload's string: key "o-1", {"x":""}, headers id (2 + 36) and
# eventType (9 + "Big").
OVERHEAD = 3 + 8 + 38 + 12


def big_event(record_bytes: int) -> Event:
    return Event("big", "o-1", "Big", {"x": "a" * (record_bytes - OVERHEAD)})


def run_relay(settings: Settings, topic: str, expected: int) -> list[Any]:
    relay = Relay(settings, RelayOptions(poll_interval=0.2))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        return consume_all(settings.kafka_bootstrap_servers, topic, expected=expected,
                           timeout=60)
    finally:
        relay.request_stop()
        thread.join(30)


@pytest.mark.parametrize(("event", "field_name", "problem"), [
    (Event("order", "o-1", "T", None), "payload",  # type: ignore[arg-type]
     "must be a JSON object, got null"),
    (Event("ordér 🚀", "o-1", "T", {}), "aggregate_type",
     "routes to topic 'ordér 🚀-events' (topic template '{aggregatetype}-events'), which "
     "Kafka refuses"),
    (Event("order", "o-1", "T", {"x": "é" * 600_000}), "payload",
     "is 1200008 bytes as JSON; the limit is 1048576 bytes (OUTBOX_MAX_PAYLOAD_BYTES)"),
    (big_event(DEFAULT_MAX_RECORD_BYTES + 1), "payload",
     "makes a Kafka record of 999001 bytes with its key and headers; the limit is 999000 "
     "bytes (OUTBOX_MAX_RECORD_BYTES)"),
])
def test_undeliverable_events_are_refused_at_publish_time(
        database_url: str, event: Event, field_name: str, problem: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(EventValidationError) as info:
            publish(conn, event)
        assert info.value.field == field_name
        assert problem in str(info.value)
        publish(conn, Event("order", "o-1", "T", {}))  # the transaction is still usable
        conn.commit()
        with pytest.raises(psycopg.Error) as sql_info:
            conn.execute("select outbox_publish(%s, %s, %s, %s)", (
                event.aggregate_type, event.aggregate_id, event.event_type,
                None if event.payload is None else Jsonb(event.payload)))
        assert sql_info.value.diag.message_primary == str(info.value)
        assert sql_info.value.diag.column_name == field_name


def test_a_record_at_the_default_limit_is_delivered_by_the_relay(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    """The limit's default fits librdkafka's and the broker's default message.max.bytes:
    a record of exactly the limit, published by publish() and by the SQL function, is
    delivered with the relay's producer settings."""
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=topic + "-{aggregatetype}")
    with psycopg.connect(database_url) as conn:
        with pytest.raises(PayloadTooLargeError):
            publish(conn, big_event(DEFAULT_MAX_RECORD_BYTES + 1), settings=settings)
        publish(conn, big_event(DEFAULT_MAX_RECORD_BYTES), settings=settings)
        conn.commit()
    with psycopg.connect(database_url) as conn:
        for statement in publish_sql.create_sql(settings):
            conn.execute(statement.encode())
        ev = big_event(DEFAULT_MAX_RECORD_BYTES)
        conn.execute("select outbox_publish(%s, %s, %s, %s)", (
            ev.aggregate_type, ev.aggregate_id, ev.event_type, Jsonb(ev.payload)))
        conn.commit()
    create_topic(kafka_bootstrap, f"{topic}-big", partitions=1)
    records = run_relay(settings, f"{topic}-big", expected=2)
    assert len(records) == 2
    for record in records:
        size = (len(record.key or b"") + len(record.value or b"")
                + sum(len(k) + len(v or b"") for k, v in record.headers))
        assert size == DEFAULT_MAX_RECORD_BYTES


def test_the_relay_parks_a_row_written_around_the_rules(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    """A row inserted by hand with a record over the limit is not sent: the relay keeps
    it back with the reason, and other aggregates go on."""
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=topic + "-{aggregatetype}", max_record_bytes=5_000)
    with psycopg.connect(database_url) as conn:
        conn.execute("insert into outbox (id, aggregatetype, aggregateid, type, payload) "
                     "values (gen_random_uuid(), 'big', 'o-1', 'Big', %s)",
                     (Jsonb({"x": "a" * 6_000}),))
        publish(conn, Event("big", "o-2", "Small", {"x": 1}), settings=settings)
        conn.commit()
    create_topic(kafka_bootstrap, f"{topic}-big", partitions=1)
    records = run_relay(settings, f"{topic}-big", expected=1)
    assert [r.key for r in records] == [b"o-2"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("select last_error from outbox where aggregateid = 'o-1'"
                               ).fetchone()
        if row and row[0]:
            break
        time.sleep(0.2)
    assert row is not None
    assert "payload too large: it makes a Kafka record of 6061 bytes" in str(row[0])
    assert "OUTBOX_MAX_RECORD_BYTES" in str(row[0])
