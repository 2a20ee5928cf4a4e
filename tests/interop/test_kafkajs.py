"""A real KafkaJS consumer with its defaults (no codec plugins) reads everything the toolkit
produces: the relay's records, Debezium's, ``outbox replay``'s, dead letters and redrive.

KafkaJS decodes only uncompressed and gzip record batches without extra packages; the
first test shows the reader really fails on lz4 (what the relay used to send), so the
others would catch a codec that slipped back in.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner
from confluent_kafka import Producer

from consumers import ConsumerOptions
from outbox.cli import main
from outbox.publish import Event, publish
from outbox.record import OutboxRow, to_record
from outbox.settings import Settings
from tests.consumers.app import Running, build
from tests.harness.connect import apply_connector, cdc, publish_each
from tests.harness.kafka import create_topic, wait_for_topic
from tests.harness.running import relay_thread
from tests.interop.conftest import JS, JsRecord, read_with_kafkajs

__all__ = ["cdc"]  # the connector fixture (tests/harness/connect.py)


def outbox_rows(url: str) -> list[OutboxRow]:
    with psycopg.connect(url) as conn:
        return [OutboxRow(*r) for r in conn.execute(
            "select id, aggregatetype, aggregateid, type, payload, created_at, correlation_id, "
            "causation_id, traceparent from outbox order by seq")]


def assert_pinned(records: list[JsRecord], rows: list[OutboxRow], template: str) -> None:
    """Each record as KafkaJS decoded it: topic, key, value and headers as pinned."""
    expected = {str(row.id): to_record(row, template) for row in rows}
    assert len(records) == len(rows)
    for record in records:
        exp = expected[str(record.headers["id"])]
        assert (record.topic, record.key, record.value) == (
            exp.topic, exp.key.decode(), (exp.value or b"").decode())
        # Debezium sends unset optional columns as headers without a value.
        assert {k: v for k, v in record.headers.items() if v is not None} == {
            k: v.decode() for k, v in exp.headers}


def sample_events() -> list[Event]:
    return [
        # Compressible, so a compressing producer would really compress the batch.
        Event("thing", "t-1", "Thing", {"orderId": "t-1", "note": "é ✓" * 400, "n": 1},
              correlation_id="c-1", causation_id="cause-1", traceparent="00-ab-cd-01"),
        Event("thing", "t-2", "Thing", {"orderId": "t-2", "items": [{"sku": "a"}]},
              correlation_id="c-2"),
        Event("thing", "t-1", "Unknown", {"orderId": "t-1", "n": 2}),
    ]


def test_the_reader_fails_on_lz4_so_the_others_prove_something(
        kafkajs: Path, kafka_bootstrap: str, topic: str) -> None:
    create_topic(kafka_bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "compression.type": "lz4"})
    # Compressible: librdkafka sends a batch uncompressed when lz4 would not make it smaller.
    producer.produce(topic, b'{"a":"' + b"x" * 5000 + b'"}', b"k")
    assert producer.flush(30) == 0
    result = subprocess.run(
        ["node", str(JS / "read.mjs"), kafka_bootstrap, topic, "1", "20000"],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, result.stdout
    assert "KafkaJSNotImplemented" in result.stderr or "LZ4" in result.stderr


def test_relay_replay_dead_letters_and_redrive_read_with_kafkajs_defaults(
        kafkajs: Path, database_url: str, kafka_bootstrap: str, topic: str) -> None:
    template = topic + "-{aggregatetype}"
    target = f"{topic}-thing"
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=template)
    create_topic(kafka_bootstrap, target, partitions=3)
    with psycopg.connect(database_url) as conn:
        publish(conn, *sample_events(), settings=settings)
    rows = outbox_rows(database_url)

    # 1. The relay, with its default producer settings.
    with relay_thread(settings):
        read_with_kafkajs(kafka_bootstrap, target, 3)
    assert_pinned(read_with_kafkajs(kafka_bootstrap, target, 3), rows, template)

    # 2. outbox replay: the same records again, original ids.
    env = {"OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": template}
    result = CliRunner().invoke(main, ["replay", "--aggregate-id", "t-2", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    records = read_with_kafkajs(kafka_bootstrap, target, 4)
    assert [r.headers["id"] for r in records].count(str(rows[1].id)) == 2

    # 3. A dead letter: the consumer has no handler for "Unknown".
    app = build(database_url, kafka_bootstrap, target, "interop-group", options=ConsumerOptions(
        backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2, max_attempts=1))
    running = Running(app)
    try:
        wait_for_topic(kafka_bootstrap, f"{target}.dlq", 60)
        (letter,) = read_with_kafkajs(kafka_bootstrap, f"{target}.dlq", 1)
    finally:
        running.stop()
    assert letter.headers["id"] == str(rows[2].id)
    assert letter.key == "t-1"
    assert letter.value == '{"n":2,"orderId":"t-1"}'
    assert letter.headers["dlq.original.topic"] == target

    # 4. Redrive of that dead letter back to its topic.
    result = CliRunner().invoke(main, ["dlq", "redrive", target, "--event-id",
                                       str(rows[2].id)], env=env)
    assert result.exit_code == 0, result.output
    records = read_with_kafkajs(kafka_bootstrap, target, 5)
    redriven = [r for r in records if r.headers["id"] == str(rows[2].id)]
    assert len(redriven) == 2
    assert redriven[0].value == redriven[1].value == letter.value


def test_debezium_records_read_with_kafkajs_defaults(
        kafkajs: Path, cdc: dict[str, Any], database_url: str, kafka_bootstrap: str) -> None:
    apply_connector(cdc)
    publish_each(database_url, sample_events())
    template: str = cdc["template"]
    target = template.replace("{aggregatetype}", "thing")
    wait_for_topic(kafka_bootstrap, target, 60)
    assert_pinned(read_with_kafkajs(kafka_bootstrap, target, 3), outbox_rows(database_url),
                  template)
