"""Arbitrary bytes thrown at a consumer (real Kafka + PostgreSQL); rebalancing under load
is in the contract suite (test_contract.py)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import TypeVar

import psycopg
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumers import ConsumerOptions
from tests.consumers.app import Running, build
from tests.consumers.rawkafka import RawHeader, RawMessage, produce_raw
from tests.harness.kafka import Header, create_topic

Msg = tuple[bytes | None, bytes | None, list[Header]]


def thing(n: int) -> Msg:
    return (f"k{n % 13}".encode(), json.dumps({"eventType": "Thing", "n": n}).encode(),
            [("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing")])


def effect_counts(url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in the effects table."""
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*), count(distinct event_id) from effects").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_for_effects(url: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if effect_counts(url)[1] >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {effect_counts(url)} effects of {n}")


# --- the fuzz: arbitrary bytes for key, value and headers, against the real broker ----------

T = TypeVar("T")
LIMIT = 8 * 1024  # the fuzzed consumer's max_message_bytes: "huge" without megabytes


def _repeat(seed: bytes, size: int) -> bytes:
    return (seed * (size // len(seed) + 1))[:size]


def _rarely(common: st.SearchStrategy[T], rare: st.SearchStrategy[T],
            one_in: int) -> st.SearchStrategy[T]:
    """``rare`` about once in ``one_in`` draws (one_of weighs its branches alike and
    drops repeated ones)."""
    return st.integers(1, one_in).flatmap(lambda i: rare if i == 1 else common)


def _deep(depth: int) -> bytes:
    return ('{"eventType": "Thing", "n": 1, "a": ' + "[" * depth + "]" * depth + "}").encode()


huge = st.builds(_repeat, st.binary(min_size=1, max_size=8), st.integers(LIMIT + 1, 3 * LIMIT))
names = st.sampled_from(["id", "eventType", "correlationId", "traceparent", "x", "dlq.reason",
                         "ünï"]).map(str.encode)
raw_names = st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b)  # not UTF-8
big = st.builds(_repeat, st.binary(min_size=1, max_size=4), st.integers(1000, 3 * LIMIT))
small = (st.binary(max_size=40) | st.none() | st.just(b"Thing")
         | st.builds(lambda: str(uuid.uuid4()).encode()))
header_values = _rarely(small, big, 20)  # now and then one over the limit
raw_headers = st.builds(  # repeated names are likely; arbitrary bytes as a name on ~1 in 4
    lambda known, raw: known + raw, st.lists(st.tuples(names, header_values), max_size=4),
    st.just([]) | st.just([]) | st.just([])
    | st.lists(st.tuples(raw_names, header_values), min_size=1, max_size=1))
good = st.builds(lambda n, s: json.dumps({"eventType": "Thing", "n": n, "s": s}).encode(),
                 st.integers(), st.text(max_size=20))  # NUL and lone surrogates included
values = _rarely(good, st.binary(max_size=64) | st.none() | huge | st.just(b"[1, 2]")
                 | st.builds(_deep, st.integers(1, 30_000)), 2)
keys = _rarely(st.binary(max_size=16) | st.none(), huge, 10)
def _message(key: bytes | None, value: bytes | None, headers: list[RawHeader],
             with_id: bool) -> RawMessage:
    """A fuzzed message; ``with_id`` appends a valid id and type after the fuzzed headers
    (the last value of a name wins), so that it reaches decoding and the handler. Every
    id is new, so a message is applied at most once."""
    if with_id:
        headers = [*headers, (b"id", str(uuid.uuid4()).encode()), (b"eventType", b"Thing")]
    return key, value, headers


messages = st.lists(st.builds(_message, keys, values, raw_headers,
                              st.sampled_from([True, True, False])), min_size=1, max_size=20)


class Totals:
    """What was produced, and what the consumer applied and dead-lettered, so far."""

    def __init__(self) -> None:
        self.produced = 0


def dead_lettered(bootstrap: str, topic: str) -> int:
    """Records in the dead-letter topic (sum of high watermarks: no transactions)."""
    probe = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "fuzz-probe"})
    try:
        info = probe.list_topics(topic, timeout=10).topics.get(topic)
        if info is None or info.error is not None:
            return 0
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in info.partitions)
    finally:
        probe.close()


@pytest.fixture
def fuzzed(database_url: str, kafka_bootstrap: str,
           topic: str) -> Iterator[tuple[Running, Totals, str]]:
    """One consumer for every example (the group joins once)."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    app = build(database_url, kafka_bootstrap, topic, f"g-{topic}", options=ConsumerOptions(
        backoff_base=0.02, backoff_cap=0.1, poll_timeout=0.2, max_attempts=3,
        max_message_bytes=LIMIT,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    running = Running(app)
    try:
        yield running, Totals(), topic
    finally:
        running.stop()


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("OUTBOX_FUZZ_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=messages)
def test_arbitrary_messages_are_applied_or_dead_lettered_and_the_consumer_stays_up(
        database_url: str, kafka_bootstrap: str, fuzzed: tuple[Running, Totals, str],
        batch: list[RawMessage]) -> None:
    running, totals, name = fuzzed
    produce_raw(kafka_bootstrap, name, batch)
    totals.produced += len(batch)
    metrics = running.app.metrics

    def counted() -> tuple[float, float]:
        """(applied, dead-lettered) as the consumer's metrics count them."""
        letters = sum(s.value for m in metrics.dead_lettered.collect() for s in m.samples
                      if s.name.endswith("_total"))
        return metrics.handled._value.get(), letters

    deadline = time.monotonic() + 90
    applied = dead = 0
    while time.monotonic() < deadline:
        assert running.thread.is_alive(), "the consumer crashed"
        applied, dead = effect_counts(database_url)[0], dead_lettered(kafka_bootstrap,
                                                                      name + ".dlq")
        # The counters move just after the effect commits / the letter is acknowledged:
        # a read in between sees the letter in Kafka a moment before it is counted.
        if applied + dead >= totals.produced and counted() == (applied, dead):
            break
        time.sleep(0.2)
    assert running.thread.is_alive(), "the consumer crashed"
    assert applied + dead == totals.produced, (applied, dead, totals.produced)
    assert counted() == (applied, dead)
    assert running.app.health() == (True, "consuming")
