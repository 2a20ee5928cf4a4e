"""One message never stops a consumer: deep, huge, unreadable (real PostgreSQL and Kafka).

Each test puts the bad message first on a one-partition topic and a good one after it:
the good one is only applied if the consumer got past the bad one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import warnings
from dataclasses import replace

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from tests.consumers.app import Running, apply_effect, build
from tests.consumers.rawkafka import produce_raw
from tests.harness.kafka import Header, Record, consume_all, create_topic, produce, wait_for_topic

OPTIONS = ConsumerOptions(backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
                          kafka_config={"session.timeout.ms": "6000",
                                        "heartbeat.interval.ms": "500"})


Msg = tuple[bytes | None, bytes | None, list[Header]]


def thing(n: int, event_id: uuid.UUID | None = None) -> Msg:
    return (b"k", json.dumps({"eventType": "Thing", "n": n}).encode(),
            [("id", str(event_id or uuid.uuid4()).encode()), ("eventType", b"Thing")])


def applied(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("select n from effects order by n")]


def run_until_applied(app: Consumer, url: str, expected: list[int],
                      timeout: float = 60) -> None:
    """Run ``app`` until ``expected`` effects exist; it must stay up meanwhile."""
    running = Running(app)
    try:
        deadline = time.monotonic() + timeout
        while applied(url) != expected:
            assert running.thread.is_alive(), "the consumer crashed"
            assert time.monotonic() < deadline, f"applied {applied(url)}, not {expected}"
            time.sleep(0.2)
        assert running.thread.is_alive(), "the consumer crashed"
    finally:
        if running.thread.is_alive():
            running.stop()


def dead_letters(bootstrap: str, topic: str, expected: int) -> list[Record]:
    wait_for_topic(bootstrap, topic + ".dlq", 30)
    return consume_all(bootstrap, topic + ".dlq", expected=expected, idle=0.5)


@pytest.fixture
def one_partition(kafka_bootstrap: str, topic: str) -> str:
    create_topic(kafka_bootstrap, topic, partitions=1)
    return topic


def allow_large(bootstrap: str, topic: str, max_bytes: int) -> None:
    """A topic-level max.message.bytes (never a broker setting: the broker is shared)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    change = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.message.bytes", str(max_bytes),
                    incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([change]).values():
        future.result(30)


def test_a_value_nested_10000_levels_deep_is_dead_lettered_and_the_next_one_applied(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    deep = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()
    eid = uuid.uuid4()
    produce(kafka_bootstrap, one_partition, [
        (b"k", deep, [("id", str(eid).encode()), ("eventType", b"Thing")]), thing(1)])
    app = build(database_url, kafka_bootstrap, one_partition, "g-deep", options=OPTIONS)
    run_until_applied(app, database_url, [1])
    [letter] = dead_letters(kafka_bootstrap, one_partition, 1)
    assert letter.header("dlq.reason") == b"undecodable-value"
    assert letter.header("dlq.exception.class") == b"PoisonMessageError"
    assert b"deep" in (letter.header("dlq.exception.message") or b"")
    assert letter.value == deep  # small enough to keep whole
    assert letter.header("id") == str(eid).encode()


@pytest.mark.slow
def test_a_50_mb_value_is_dead_lettered_truncated_with_its_size_and_hash(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    """Over the consumer's size limit (1 MiB by default): dead-lettered at once, cut to
    what the dead-letter topic takes, with the original size and SHA-256 in headers."""
    allow_large(kafka_bootstrap, one_partition, 60_000_000)
    huge = os.urandom(50_000_000)  # incompressible, not JSON
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 60_000_000})
    producer.produce(one_partition, key=b"k", value=huge,
                     headers=[("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing")])
    assert producer.flush(60) == 0
    produce(kafka_bootstrap, one_partition, [thing(1)])
    app = build(database_url, kafka_bootstrap, one_partition, "g-huge", options=OPTIONS)
    run_until_applied(app, database_url, [1], timeout=120)
    [letter] = dead_letters(kafka_bootstrap, one_partition, 1)
    assert letter.header("dlq.reason") == b"too-large"
    assert letter.header("dlq.original.size") == b"50000000"
    assert letter.header("dlq.original.sha256") == hashlib.sha256(huge).hexdigest().encode()
    assert letter.header("dlq.truncated") is not None
    assert letter.value is not None and huge.startswith(letter.value)
    assert len(letter.value) < 1_000_000
    assert letter.header("dlq.original.offset") == b"0"
    assert letter.header("id") is not None  # original headers kept when they fit


def test_a_dead_letter_the_dlq_topic_refuses_is_sent_truncated(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    """Under a raised consumer limit a 2 MB non-JSON value is undecodable; its dead-letter
    topic keeps the broker's default limit (1 MB) and refuses it whole: it goes truncated."""
    allow_large(kafka_bootstrap, one_partition, 4_000_000)
    big = b"not json " + os.urandom(2_000_000)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 4_000_000})
    producer.produce(one_partition, key=b"k", value=big,
                     headers=[("id", str(uuid.uuid4()).encode())])
    assert producer.flush(30) == 0
    produce(kafka_bootstrap, one_partition, [thing(1)])
    options = replace(OPTIONS, max_message_bytes=4_000_000)
    app = build(database_url, kafka_bootstrap, one_partition, "g-refused", options=options)
    run_until_applied(app, database_url, [1])
    [letter] = dead_letters(kafka_bootstrap, one_partition, 1)
    assert letter.header("dlq.reason") == b"undecodable-value"
    assert letter.header("dlq.original.size") == str(len(big)).encode()
    assert letter.header("dlq.original.sha256") == hashlib.sha256(big).hexdigest().encode()
    assert letter.value is not None and big.startswith(letter.value)


def test_a_header_name_that_is_not_utf8_is_dead_lettered(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    """confluent-kafka cannot read such a message's headers at all (SystemError)."""
    eid = str(uuid.uuid4()).encode()
    produce_raw(kafka_bootstrap, one_partition, [
        (b"k", b'{"eventType": "Thing", "n": 0}', [(b"id", eid), (b"\xff\xfe", b"x")])])
    produce(kafka_bootstrap, one_partition, [thing(1)])
    app = build(database_url, kafka_bootstrap, one_partition, "g-hdr", options=OPTIONS)
    run_until_applied(app, database_url, [1])
    [letter] = dead_letters(kafka_bootstrap, one_partition, 1)
    assert letter.header("dlq.reason") == b"unreadable-headers"
    assert letter.value == b'{"eventType": "Thing", "n": 0}'
    assert letter.header("dlq.truncated") == b"headers"
    assert letter.header("dlq.original.topic") == one_partition.encode()


# --- a sync handler that returns a coroutine ---------------------------------------------

async def async_handler(session: Session, event: IncomingEvent) -> None:
    apply_effect(session, event)


def test_a_handler_returning_a_coroutine_is_never_recorded_as_processed(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    """A sync handler that returns an awaitable did not do its work: the event is not
    recorded in the inbox; after max_attempts it is dead-lettered, saying why."""

    def sneaky(session: Session, event: IncomingEvent) -> object:
        if event.payload["n"] == 0:
            return async_handler(session, event)  # a coroutine nobody awaits
        apply_effect(session, event)
        return None

    eid = uuid.uuid4()
    produce(kafka_bootstrap, one_partition, [thing(0, eid), thing(1)])
    options = replace(OPTIONS, max_attempts=2)
    app = build(database_url, kafka_bootstrap, one_partition, "g-coro",
                handler=sneaky, options=options)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited"
        run_until_applied(app, database_url, [1])
    [letter] = dead_letters(kafka_bootstrap, one_partition, 1)
    assert letter.header("dlq.reason") == b"handler-failed"
    assert letter.header("dlq.exception.class") == b"TypeError"
    assert b"sneaky" in (letter.header("dlq.exception.message") or b"")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select count(*) from inbox where event_id = %s", (eid,)).fetchone()
    assert row == (0,)



def test_a_dead_letter_topic_that_refuses_everything_is_an_outage_not_a_skip(
        database_url: str, kafka_bootstrap: str, one_partition: str) -> None:
    """Even the bare letter is refused (the .dlq topic takes 200 bytes): the consumer
    retries, says so on /health, stops cleanly when asked, and once the topic is fixed
    the letter lands and the message after it is applied — nothing skipped, no crash."""
    dlq = one_partition + ".dlq"
    create_topic(kafka_bootstrap, dlq, partitions=1)
    allow_large(kafka_bootstrap, dlq, 200)
    produce(kafka_bootstrap, one_partition, [
        (b"k", b"not json", [("id", str(uuid.uuid4()).encode())]), thing(1)])
    app = build(database_url, kafka_bootstrap, one_partition, "g-outage", options=OPTIONS)
    running = Running(app)
    deadline = time.monotonic() + 60
    while "dead letters not acknowledged" not in app.health()[1]:
        assert running.thread.is_alive(), "the consumer crashed"
        assert time.monotonic() < deadline, app.health()
        time.sleep(0.2)
    assert app.health()[0] is False
    running.stop()  # during the outage: the message is given back, not committed
    assert applied(database_url) == []
    allow_large(kafka_bootstrap, dlq, 1_000_000)
    app = build(database_url, kafka_bootstrap, one_partition, "g-outage", options=OPTIONS)
    run_until_applied(app, database_url, [1])
    [letter] = consume_all(kafka_bootstrap, dlq, expected=1, idle=0.5)
    assert letter.header("dlq.reason") == b"undecodable-value"
    assert letter.value == b"not json"
