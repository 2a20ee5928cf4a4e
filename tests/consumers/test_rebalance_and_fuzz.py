"""Rebalancing under load, and arbitrary bytes thrown at a consumer (real Kafka + PostgreSQL)."""

from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.consumers.app import Running, build
from tests.harness.kafka import Header, consume_all, create_topic, produce, unique_topic

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


@pytest.mark.slow
def test_rebalance_with_two_consumers_while_messages_flow(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    create_topic(kafka_bootstrap, topic, partitions=4)
    first = Running(build(database_url, kafka_bootstrap, topic, "g-rebalance"))
    produce(kafka_bootstrap, topic, [thing(n) for n in range(0, 150)])
    second = Running(build(database_url, kafka_bootstrap, topic, "g-rebalance"))  # joins
    produce(kafka_bootstrap, topic, [thing(n) for n in range(150, 300)])
    time.sleep(1)
    first.stop()  # leaves: its partitions move to the second one
    produce(kafka_bootstrap, topic, [thing(n) for n in range(300, 400)])
    wait_for_effects(database_url, 400)
    second.stop()
    rows, distinct = effect_counts(database_url)
    assert (rows, distinct) == (400, 400), "lost or doubled effects"


headers = st.lists(st.tuples(
    st.sampled_from(["id", "eventType", "correlationId", "x"]) | st.text(min_size=1, max_size=8),
    st.binary(max_size=40) | st.builds(lambda: str(uuid.uuid4()).encode())
    | st.just(b"Thing")), max_size=4)
values = (st.binary(max_size=64) | st.just(b'{"eventType": "Thing", "n": 1}')
          | st.builds(lambda n: json.dumps({"eventType": "Thing", "n": n}).encode(),
                      st.integers()) | st.none())
messages = st.lists(st.tuples(st.binary(max_size=16) | st.none(), values, headers),
                    min_size=1, max_size=25)


@pytest.mark.slow
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=messages)
def test_arbitrary_messages_are_handled_or_dead_lettered(
        database_url: str, kafka_bootstrap: str, batch: list[Msg]) -> None:
    name = unique_topic("fuzz")
    create_topic(kafka_bootstrap, name, partitions=2)
    produce(kafka_bootstrap, name, batch)
    with psycopg.connect(database_url) as conn:
        conn.execute("drop table if exists effects")
    running = Running(build(database_url, kafka_bootstrap, name, f"g-{name}"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = running.app.metrics
            handled = metrics.handled._value.get() + metrics.duplicates._value.get()
            dead = sum(s.value for m in metrics.dead_lettered.collect() for s in m.samples
                       if s.name.endswith("_total"))
            if handled + dead >= len(batch):
                break
            assert running.thread.is_alive(), "the consumer crashed"
            time.sleep(0.2)
        assert running.thread.is_alive(), "the consumer crashed"
        assert handled + dead == len(batch)
        letters = consume_all(kafka_bootstrap, name + ".dlq", timeout=10, idle=0.3,
                              expected=int(dead))
        assert len(letters) == int(dead)
    finally:
        running.stop()
