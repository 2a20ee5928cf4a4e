"""Kafka helpers for tests: unique topics, produce, consume everything, inspect."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Record:
    """One consumed Kafka message, decoded enough to assert on."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def to_record(msg: Message) -> Record:
    """Freeze a confluent-kafka message into a plain record."""
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]
    key, value = msg.key(), msg.value()
    return Record(
        topic=msg.topic() or "", partition=msg.partition() or 0, offset=msg.offset() or 0,
        key=key.encode() if isinstance(key, str) else key,
        value=value.encode() if isinstance(value, str) else value,
        headers=headers, timestamp_ms=msg.timestamp()[1],
    )


def unique_topic(hint: str = "t") -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", hint)[:60]
    return f"test-{clean}-{uuid.uuid4().hex[:8]}"


def create_topic(bootstrap: str, name: str, partitions: int = 3, timeout: float = 15) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1)])
    try:
        futures[name].result(timeout)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
    wait_for_topic(bootstrap, name, timeout)


def wait_for_topic(bootstrap: str, name: str, timeout: float = 15) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5)
        topic = md.topics.get(name)
        if topic is not None and topic.error is None and topic.partitions:
            return
        time.sleep(0.2)
    raise TimeoutError(f"topic {name} has no metadata after {timeout}s")


Header = tuple[str, str | bytes | None]


def produce(bootstrap: str, topic: str,
            messages: list[tuple[bytes | None, bytes | None, list[Header]]]) -> None:
    """Produce (key, value, headers) triples and wait until every one is acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "partitioner": "murmur2_random"})
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value, headers in messages:
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(30)
    if left or errors:
        raise RuntimeError(f"produce to {topic}: {left} undelivered, errors {errors[:3]}")


def consume_all(bootstrap: str, topic: str, expected: int | None = None,
                timeout: float = 30.0, idle: float = 2.0) -> list[Record]:
    """Read ``topic`` from the beginning of every partition.

    Stops when ``expected`` records have arrived (then waits ``idle`` more seconds for
    unexpected extras when ``expected`` is given as an exact count), or at ``timeout``.
    """
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    records: list[Record] = []
    try:
        md = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        while time.monotonic() < deadline:
            if expected is not None and len(records) >= expected:
                quiet_until = quiet_until or time.monotonic() + idle
                if time.monotonic() >= quiet_until:
                    break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                continue
            records.append(to_record(msg))
    finally:
        consumer.close()
    return records
