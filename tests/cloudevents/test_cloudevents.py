"""CloudEvents binary mode: the relay's and Debezium's records carry the same ce_* headers,
the `cloudevents` SDK's own Kafka binding reads them from the broker, and the consumer
takes events in either form."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent
from sqlalchemy.orm import Session

from connect.client import ConnectClient
from connect.config import render
from consumers import IncomingEvent
from consumers.message import Received, decode
from outbox import cloudevents
from outbox.cli import main
from outbox.errors import ConfigurationError
from outbox.publish import Event, publish
from outbox.record import StoredRow, stored_headers
from outbox.settings import Settings, load_settings
from tests.harness.connect import apply_connector, by_key, comparable, publish_each, read
from tests.harness.kafka import Record, consume_all, create_topic, produce
from tests.harness.running import consume_until
from tests.relay.conftest import relay_settings

CE_HEADERS = ["ce_id", "ce_type", "ce_time", "ce_specversion", "ce_source", "content-type"]


def test_time_format_and_off_is_the_plain_record() -> None:
    assert cloudevents.format_time(0) == "1970-01-01T00:00:00.000Z"
    assert cloudevents.format_time(1_764_620_170_123) == "2025-12-01T20:16:10.123Z"
    assert cloudevents.record_headers(Settings()) is stored_headers
    row = StoredRow("e-1", "order", "o-1", "Created", "{}", 1_764_620_170_123)
    on = cloudevents.record_headers(Settings(cloudevents="binary", cloudevents_source="/shop"))
    assert on(row) == [("id", "e-1"), ("eventType", "Created"), ("ce_id", "e-1"),
                       ("ce_type", "Created"), ("ce_time", "2025-12-01T20:16:10.123Z"),
                       ("ce_specversion", "1.0"), ("ce_source", "/shop"),
                       ("content-type", "application/json")]


def test_setting_is_checked_at_start() -> None:
    with pytest.raises(ConfigurationError, match="OUTBOX_CLOUDEVENTS"):
        load_settings(cloudevents="structured")
    for source in (" ", "1.0", "true", "[a]", "/a b"):
        with pytest.raises(ConfigurationError, match="OUTBOX_CLOUDEVENTS_SOURCE"):
            load_settings(cloudevents="binary", cloudevents_source=source)
    assert load_settings(cloudevents_source="urn:shop:orders").cloudevents_source


def test_rendered_connector_adds_the_same_headers() -> None:
    base = Settings(database_url="postgresql://app@db/shop")
    plain = render(base)
    config = render(base.model_copy(update={"cloudevents": "binary"}))
    assert plain["transforms"] == "outbox"
    assert config["transforms"] == "outbox,ceSource,ceContentType"
    assert config["transforms.outbox.table.fields.additional.placement"].endswith(
        ",id:header:ce_id,type:header:ce_type,ce_time:header:ce_time,"
        "ce_specversion:header:ce_specversion")
    assert config["transforms.ceSource.value.literal"] == "/outbox"


def events() -> list[Event]:
    return [Event("order", f"o-{n % 2}", f"Step{n}", {"n": n, "note": "é"},
                  correlation_id="c", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                                 "00f067aa0ba902b7-01" if n % 2 else None)
            for n in range(6)]


def cloud_event(record: Record) -> Any:
    """What the cloudevents SDK's Kafka binding reads from one of our records."""
    return from_kafka_event(KafkaMessage(
        headers={k: v for k, v in record.headers if v is not None}, key=record.key,
        value=record.value or b""))


def check_cloud_events(records: list[Record], source: str) -> None:
    for record in records:
        headers = {k: v or b"" for k, v in record.headers}
        event = cloud_event(record)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == headers["id"].decode()
        assert event.get_type() == headers["eventType"].decode()
        assert event.get_source() == source
        assert event.get_datacontenttype() == "application/json"
        assert event.get_time() == dt.datetime.fromtimestamp(record.timestamp_ms / 1000, dt.UTC)
        assert event.get_data() == __import__("json").loads(record.value or b"")
        assert event.get_extension("partitionkey") == record.key.decode()  # type: ignore[union-attr]
        names = [k for k, v in record.headers if v is not None]
        assert names[-6:] == CE_HEADERS


@pytest.mark.postgres
@pytest.mark.kafka
def test_relay_records_read_by_the_cloudevents_sdk(outbox_url: str, kafka_bootstrap: str,
                                                   prefix: str, start_relay: Any) -> None:
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix, cloudevents="binary",
                              cloudevents_source="/shop/orders")
    create_topic(kafka_bootstrap, prefix + "-order", 2)
    with psycopg.connect(outbox_url) as conn:
        publish(conn, *events())
    relay = start_relay(settings)
    records = consume_all(kafka_bootstrap, prefix + "-order", expected=6, timeout=30)
    assert relay.stop() == 0
    assert len(records) == 6
    check_cloud_events(records, "/shop/orders")


@pytest.mark.connect
@pytest.mark.postgres
@pytest.mark.kafka
def test_debezium_and_relay_records_are_the_same_cloud_events(
        cdc: dict[str, Any], database_url: str, kafka_bootstrap: str, connect_url: str,
        start_relay: Any) -> None:
    apply_connector(cdc, {**cdc["env"], "OUTBOX_CLOUDEVENTS": "binary"})
    publish_each(database_url, events())
    template: str = cdc["template"]
    got = read(kafka_bootstrap, template.replace("{aggregatetype}", "order"), 6)
    assert len(got) == 6, str(ConnectClient(connect_url).status(cdc["name"]))[-3000:]
    check_cloud_events(got, "/outbox")
    relay_template = template.replace("-cdc-", "-relay-")
    relay = start_relay(Settings(database_url=database_url,
                                 kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_template=relay_template, cloudevents="binary"))
    relayed = read(kafka_bootstrap, relay_template.replace("{aggregatetype}", "order"), 6)
    assert relay.stop() == 0
    # Parity: the same keys, values and headers (ce_* included, byte for byte), per key.
    assert by_key(comparable(got, template.split("{", 1)[0])) == by_key(
        comparable(relayed, relay_template.split("{", 1)[0]))
    check_cloud_events(relayed, "/outbox")  # ce_time = the record timestamp, both sides


def test_decode_takes_either_form() -> None:
    event_id = uuid.uuid4()
    ce = CloudEvent({"id": str(event_id), "source": "/elsewhere", "type": "Created",
                     "specversion": "1.0", "datacontenttype": "application/json",
                     "partitionkey": "o-1"}, {"n": 1})
    message = to_binary_event(ce)
    received = Received("t", 0, 5, 0, b"o-1", message.value, list(message.headers.items()))
    incoming = decode(received)
    assert (incoming.id, incoming.type, dict(incoming.payload), incoming.key) == (
        event_id, "Created", {"n": 1}, "o-1")


@pytest.mark.postgres
@pytest.mark.kafka
def test_consumer_handles_cloud_events_from_another_producer(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    """Binary-mode CloudEvents written by the SDK (no toolkit headers) are handled and
    deduplicated like the toolkit's own records."""
    create_topic(kafka_bootstrap, topic, 1)
    ids = [uuid.uuid4() for _ in range(3)]
    messages: list[tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]] = []
    for n, event_id in enumerate([*ids, ids[0]]):  # the last one is a duplicate
        kafka = to_binary_event(CloudEvent({
            "id": str(event_id), "source": "/java-app", "type": "Thing", "specversion": "1.0",
            "datacontenttype": "application/json", "partitionkey": "k"}, {"n": n}))
        messages.append((b"k", kafka.value, list(kafka.headers.items())))
    produce(kafka_bootstrap, topic, messages)
    seen: list[uuid.UUID] = []
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)

    def handle(session: Session, event: IncomingEvent) -> None:
        seen.append(event.id)

    consume_until(settings, f"g-{topic}", topic, "Thing", handle,
                  lambda app: app.metrics.duplicates._value.get() >= 1)
    assert seen == ids


@pytest.mark.postgres
def test_ce_time_column_is_the_relays_time_text(outbox_url: str) -> None:
    """The generated column (what Debezium places) and the relay's own formatting agree,
    to the truncated millisecond, also at the edges of a second and of a year."""
    stamps = ["2026-12-01 20:16:10.123999", "2026-12-31 23:59:59.999999", "2000-02-29 00:00:00",
              "1999-01-01 01:02:03.0005", "2026-06-30 12:00:59.9"]
    with psycopg.connect(outbox_url) as conn:
        for n, stamp in enumerate(stamps):
            conn.execute("insert into outbox (id, aggregatetype, aggregateid, type, payload, "
                         "created_at) values (gen_random_uuid(), 'order', %s, 'T', '{}', %s)",
                         (f"o-{n}", stamp))
        rows = conn.execute("select ce_time, floor(extract(epoch from created_at) * 1000)"
                            "::int8 from outbox order by seq").fetchall()
    assert [r[0] for r in rows] == [cloudevents.format_time(r[1]) for r in rows]
    assert rows[0][0] == "2026-12-01T20:16:10.123Z"
    assert rows[1][0] == "2026-12-31T23:59:59.999Z"


@pytest.mark.postgres
@pytest.mark.kafka
def test_replay_sends_the_same_cloud_events(database_url: str, kafka_bootstrap: str,
                                            topic: str) -> None:
    from tests.replay.test_replay import _rows

    _rows(database_url)
    template = topic + "-{aggregatetype}"
    create_topic(kafka_bootstrap, f"{topic}-order", partitions=1)
    result = CliRunner().invoke(main, ["replay", "--aggregate-id", "o-1"], env={
        "OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OUTBOX_TOPIC_TEMPLATE": template, "OUTBOX_CLOUDEVENTS": "binary"})
    assert result.exit_code == 0, result.output
    got = consume_all(kafka_bootstrap, f"{topic}-order", expected=2, idle=1)
    assert len(got) == 2
    check_cloud_events(got, "/outbox")


@pytest.mark.postgres
def test_cdc_check_wants_schema_5_in_binary_mode(database_url: str) -> None:
    from connect.checks import run_cdc_checks

    settings = Settings(database_url=database_url, cloudevents="binary")
    assert not [p for p in run_cdc_checks(settings) if "ce_time" in p]
    with psycopg.connect(database_url) as conn:
        conn.execute("alter table outbox drop column ce_specversion")
    (problem,) = [p for p in run_cdc_checks(settings) if "ce_time" in p]
    assert "run `outbox db upgrade`" in problem
    assert not [p for p in run_cdc_checks(Settings(database_url=database_url))
                if "ce_time" in p]
