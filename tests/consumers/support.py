"""Helpers of the consumer tests: test messages, what the test app applied, waiting."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from tests.consumers.app import CREATE_EFFECTS
from tests.harness.kafka import Header

Msg = tuple[bytes | None, bytes | None, list[Header]]


def thing(n: int, key: str = "k1", event_id: uuid.UUID | None = None) -> Msg:
    eid = event_id or uuid.uuid4()
    return (key.encode(), json.dumps({"eventType": "Thing", "n": n}).encode(),
            [("id", str(eid).encode()), ("eventType", b"Thing")])


def effects(url: str) -> list[tuple[uuid.UUID, int]]:
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("select event_id, n from effects order by n")]


def outbox_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from outbox").fetchone()
        return int(row[0]) if row else 0


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def ensure_effects(url: str) -> None:
    """The consumer app's table, before a subprocess of it is polled for effects."""
    with psycopg.connect(url) as conn:
        conn.execute(CREATE_EFFECTS)


def committed(bootstrap: str, topic: str, group: str) -> int:
    kc = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": group,
                        "enable.auto.commit": False})
    try:
        offsets = kc.committed([TopicPartition(topic, p) for p in (0, 1)], timeout=10)
    finally:
        kc.close()
    return sum(max(tp.offset, 0) for tp in offsets)
