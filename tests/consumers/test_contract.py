"""The consumer's contract, for every handler kind, against real PostgreSQL and Kafka.

Each test runs twice (the ``kind`` fixture): with a sync handler on a ``Session`` and with
an ``async def`` handler on an ``AsyncSession`` (the async engine, awaited inside the
transaction). Both must give the same guarantees: inbox row, handler writes and published
events in one transaction; offsets committed only after it; order per key; retries with
backoff; dead letters; nothing recorded as processed unless its handler ran and committed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import ClassVar

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from consumers import AsyncPublisher, ConsumerOptions, IncomingEvent, Publisher
from outbox.cli import main
from tests.consumers.app import Running, build, handler_for
from tests.consumers.support import Msg, committed, effects, outbox_count, thing, wait_for
from tests.harness.kafka import consume_all, create_topic, produce, wait_for_topic
from tests.harness.stack import ROOT

FAST = ConsumerOptions(backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
                       kafka_config={"session.timeout.ms": "6000",
                                     "heartbeat.interval.ms": "500"})


def test_the_same_event_delivered_twice_has_one_effect(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    eid = uuid.uuid4()
    produce(kafka_bootstrap, topic_ready, [thing(1, event_id=eid), thing(1, event_id=eid),
                                           thing(2)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g1", kind=kind))
    wait_for(lambda: len(effects(database_url)) == 2)
    running.stop()
    assert outbox_count(database_url) == 2
    assert running.app.metrics.duplicates._value.get() == 1
    assert sorted(n for _, n in effects(database_url)) == [1, 2]


def test_replay_from_offset_zero_is_deduplicated(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    produce(kafka_bootstrap, topic_ready, [thing(n, key=f"k{n % 3}") for n in range(20)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-replay", kind=kind))
    wait_for(lambda: len(effects(database_url)) == 20)
    running.stop()
    # Rewind the group to offset 0 with Kafka's own tooling semantics: commit offset 0.
    kc = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": "g-replay",
                        "enable.auto.commit": False})
    kc.commit(offsets=[TopicPartition(topic_ready, p, 0) for p in (0, 1)], asynchronous=False)
    kc.close()
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-replay", kind=kind))
    wait_for(lambda: running.app.metrics.duplicates._value.get() >= 20)
    running.stop()
    assert len(effects(database_url)) == 20
    assert outbox_count(database_url) == 20


def test_order_per_key_holds_across_a_failing_handler(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    """The second event of a key fails twice; the third, same key, waits for it."""
    failures = {"left": 2}

    def before(event: IncomingEvent) -> None:
        if event.payload.get("n") == 1 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("not yet")

    produce(kafka_bootstrap, topic_ready, [thing(n, key="same") for n in range(3)])
    app = build(database_url, kafka_bootstrap, topic_ready, "g-order",
                handler=handler_for(kind, before=before))
    running = Running(app)
    wait_for(lambda: len(effects(database_url)) == 3)
    running.stop()
    with psycopg.connect(database_url) as conn:
        order = [r[0] for r in conn.execute("select n from effects order by ctid")]
    assert order == [0, 1, 2]


def test_handler_failure_rolls_back_its_writes_and_events_then_retry_succeeds(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    calls = {"n": 0}

    def after(event: IncomingEvent) -> None:  # the row and the outbox event are written ...
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("boom")  # ... and must roll back

    produce(kafka_bootstrap, topic_ready, [thing(1), thing(2)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g2",
                            handler=handler_for(kind, after=after)))
    wait_for(lambda: len(effects(database_url)) == 2)
    running.stop()
    assert sorted(n for _, n in effects(database_url)) == [1, 2]
    assert outbox_count(database_url) == 2
    # The batch path and then the careful one-by-one path met the failure: at least one
    # retry was scheduled, and the effect still happened once.
    assert running.app.metrics.retries._value.get() >= 1


POISON: list[tuple[str, Msg]] = [
    ("missing-id", (b"k", b'{"eventType": "Thing"}', [("eventType", b"Thing")])),
    ("malformed-id", (b"k", b'{"eventType": "Thing"}', [("id", b"not-a-uuid")])),
    ("undecodable-value", (b"k", b"\xff\xfe not json", [("id", str(uuid.uuid4()).encode())])),
    ("undecodable-value", (b"k", b"[1, 2]", [("id", str(uuid.uuid4()).encode())])),
    ("empty-value", (b"k", None, [("id", str(uuid.uuid4()).encode())])),
    ("unknown-event-type", (b"k", b'{"eventType": "Unknown"}',
                            [("id", str(uuid.uuid4()).encode()), ("eventType", b"Unknown")])),
]


def test_every_poison_kind_goes_to_the_dlq_with_headers_and_the_consumer_keeps_going(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    produce(kafka_bootstrap, topic_ready,
            [thing(0)] + [m for _, m in POISON] + [thing(1)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g3", kind=kind))
    wait_for(lambda: len(effects(database_url)) == 2)
    # Poison and good messages may sit on different partitions: wait for the dead letters.
    wait_for_topic(kafka_bootstrap, topic_ready + ".dlq", 30)
    letters = consume_all(kafka_bootstrap, topic_ready + ".dlq", expected=len(POISON), idle=1)
    running.stop()
    assert sorted(r.header("dlq.reason") or b"" for r in letters) == sorted(
        reason.encode() for reason, _ in POISON)
    for record in letters:
        assert record.header("dlq.original.topic") == topic_ready.encode()
        assert record.header("dlq.consumer.group") == b"g3"
        assert record.header("dlq.attempts") == b"1"
        for name in ("dlq.original.partition", "dlq.original.offset", "dlq.original.timestamp",
                     "dlq.exception.class", "dlq.exception.message"):
            assert record.header(name), name
        assert record.key == b"k"
    original = dict(POISON)["malformed-id"]
    malformed = next(r for r in letters if r.header("dlq.reason") == b"malformed-id")
    assert malformed.value == original[1]
    assert malformed.header("id") == b"not-a-uuid"


def test_handler_that_always_fails_is_dead_lettered_after_max_attempts_then_redriven(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    broken = {"on": True}

    def before(event: IncomingEvent) -> None:
        if broken["on"] and event.payload.get("n") == 1:
            raise ValueError("cannot handle n=1 yet")

    eid = uuid.uuid4()
    produce(kafka_bootstrap, topic_ready, [thing(1, event_id=eid), thing(2)])
    app = build(database_url, kafka_bootstrap, topic_ready, "g4",
                handler=handler_for(kind, before=before),
                options=ConsumerOptions(max_attempts=3, backoff_base=0.05, backoff_cap=0.1,
                                        poll_timeout=0.2))
    running = Running(app)
    wait_for(lambda: len(effects(database_url)) == 1)
    wait_for_topic(kafka_bootstrap, topic_ready + ".dlq", 60)
    letters = consume_all(kafka_bootstrap, topic_ready + ".dlq", expected=1, idle=0.5)
    assert [r.header("dlq.reason") for r in letters] == [b"handler-failed"]
    assert letters[0].header("dlq.attempts") == b"3"
    assert letters[0].header("dlq.exception.class") == b"ValueError"
    with psycopg.connect(database_url) as conn:  # never recorded as processed
        assert conn.execute("select count(*) from inbox where event_id = %s",
                            (eid,)).fetchone() == (0,)
    env = {"OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    listed = CliRunner().invoke(main, ["dlq", "list", topic_ready], env=env)
    assert listed.exit_code == 0, listed.output
    assert str(eid) in listed.output
    assert "handler-failed" in listed.output
    dry = CliRunner().invoke(main, ["dlq", "redrive", topic_ready, "--all", "--dry-run"], env=env)
    assert "1 dead letter(s) would be redriven" in dry.output
    broken["on"] = False  # "the fix is deployed"
    for _ in range(2):  # redriving twice is harmless: the inbox dedupes
        result = CliRunner().invoke(main, ["dlq", "redrive", topic_ready, "--event-id",
                                           str(eid)], env=env)
        assert result.exit_code == 0, result.output
    wait_for(lambda: len(effects(database_url)) == 2)
    wait_for(lambda: app.metrics.duplicates._value.get() >= 1)
    running.stop()
    assert sorted(n for _, n in effects(database_url)) == [1, 2]


@pytest.mark.slow
def test_kill_9_between_db_commit_and_offset_commit_has_no_double_effect(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    produce(kafka_bootstrap, topic_ready, [thing(n, key=f"k{n}") for n in range(10)])
    cmd = [sys.executable, "-m", "tests.consumers.app", database_url, kafka_bootstrap,
           topic_ready, "g5"]
    env = {**os.environ, "OUTBOX_TEST_HANDLER_KIND": kind}
    proc = subprocess.run(cmd, cwd=ROOT, env={**env, "OUTBOX_TEST_CRASH_AFTER_DB_COMMIT": "1"},
                          timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    applied = len(effects(database_url))
    assert applied > 0  # the DB commit happened, the offset commit did not
    proc2 = subprocess.Popen(cmd[:], cwd=ROOT, env=env)
    try:
        # The restarted consumer is redelivered what the killed one applied but did not
        # commit; it must skip it and commit the offsets this time.
        wait_for(lambda: committed(kafka_bootstrap, topic_ready, "g5") == 10, timeout=60)
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(30) == 0
    assert sorted(n for _, n in effects(database_url)) == list(range(10))
    assert outbox_count(database_url) == 10


def test_a_failing_commit_rewinds_the_batch_instead_of_crashing(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    # A deferred constraint fails at COMMIT, after every handler returned: no message can
    # be blamed. The first two commits (fast path, then careful path) fail; the third holds.
    with psycopg.connect(database_url) as conn:
        conn.execute("create table guard (k int unique deferrable initially deferred)")
        conn.execute("insert into guard values (1)")
    calls = 0

    def before(event: IncomingEvent) -> str | None:
        nonlocal calls
        calls += 1
        return "insert into guard values (1)" if calls <= 2 else None

    produce(kafka_bootstrap, topic_ready, [thing(1)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-commit",
                            handler_for(kind, before=before)))
    wait_for(lambda: len(effects(database_url)) == 1)
    assert running.thread.is_alive(), "the consumer crashed on a failed commit"
    running.stop()
    assert calls == 3 and len(effects(database_url)) == 1


@pytest.mark.slow
def test_rebalance_with_two_consumers_while_messages_flow(
        database_url: str, kafka_bootstrap: str, topic: str, kind: str) -> None:
    create_topic(kafka_bootstrap, topic, partitions=4)
    many = [thing(n, key=f"k{n % 13}") for n in range(400)]
    first = Running(build(database_url, kafka_bootstrap, topic, "g-rebalance", kind=kind))
    produce(kafka_bootstrap, topic, many[:150])
    second = Running(build(database_url, kafka_bootstrap, topic, "g-rebalance", kind=kind))
    produce(kafka_bootstrap, topic, many[150:300])
    time.sleep(1)
    first.stop()  # leaves: its partitions move to the second one
    produce(kafka_bootstrap, topic, many[300:])
    wait_for(lambda: len({eid for eid, _ in effects(database_url)}) >= 400, timeout=90)
    second.stop()
    rows = effects(database_url)
    assert (len(rows), len({eid for eid, _ in rows})) == (400, 400), "lost or doubled effects"


# --- typed handlers: the model, the envelope, the publisher ------------------------------

class Thing(BaseModel):
    __aggregate_type__: ClassVar[str] = "effect"
    __event_type__: ClassVar[str] = "ThingSeen"
    n: int


def typed_handler(kind: str) -> object:
    if kind == "sync":
        def typed(thing: Thing, session: Session, publisher: Publisher,
                  envelope: IncomingEvent) -> None:
            session.execute(text("insert into effects (event_id, n) values (:id, :n)"),
                            {"id": envelope.id, "n": thing.n})
            publisher.publish(Thing(n=thing.n * 10), aggregate_id=envelope.key or "k")

        return typed

    async def typed_async(thing: Thing, session: AsyncSession, publisher: AsyncPublisher,
                          envelope: IncomingEvent) -> None:
        await session.execute(text("insert into effects (event_id, n) values (:id, :n)"),
                              {"id": envelope.id, "n": thing.n})
        await publisher.publish(Thing(n=thing.n * 10), aggregate_id=envelope.key or "k")

    return typed_async


def test_a_typed_handler_gets_the_model_and_a_payload_that_does_not_validate_is_dead_lettered(
        database_url: str, kafka_bootstrap: str, topic_ready: str, kind: str) -> None:
    bad: Msg = (b"k1", json.dumps({"eventType": "Thing", "n": "many"}).encode(),
                [("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing")])
    good_id = uuid.uuid4()
    good = thing(7, event_id=good_id)
    produce(kafka_bootstrap, topic_ready, [bad, good])
    app = build(database_url, kafka_bootstrap, topic_ready, "g-typed",
                handler=typed_handler(kind), options=FAST)  # type: ignore[arg-type]
    running = Running(app)
    wait_for(lambda: len(effects(database_url)) == 1)
    wait_for_topic(kafka_bootstrap, topic_ready + ".dlq", 30)
    [letter] = consume_all(kafka_bootstrap, topic_ready + ".dlq", expected=1, idle=0.5)
    running.stop()
    assert letter.header("dlq.reason") == b"invalid-payload"
    assert b"n\n  Input should be a valid integer" in (
        letter.header("dlq.exception.message") or b"")
    with psycopg.connect(database_url) as conn:
        row = conn.execute("select type, aggregatetype, payload, causation_id from outbox"
                           ).fetchone()
    assert row == ("ThingSeen", "effect", {"n": 70}, str(good_id))


def test_sync_handlers_of_an_async_consumer_share_its_transaction(
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    """One async handler makes every batch async; the sync fallback runs through
    run_sync in the same transaction, and fails or commits with it."""
    calls = {"n": 0}

    def after(event: IncomingEvent) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first attempt fails")

    app = build(database_url, kafka_bootstrap, topic_ready, "g-mixed", options=FAST,
                handler=handler_for("async"))
    app.add_handler(topic_ready, None, handler_for("sync", after=after))
    assert app.is_async
    other: Msg = (b"k1", json.dumps({"eventType": "Other", "n": 5}).encode(),
             [("id", str(uuid.uuid4()).encode()), ("eventType", b"Other")])
    produce(kafka_bootstrap, topic_ready, [thing(1), other])
    running = Running(app)
    wait_for(lambda: len(effects(database_url)) == 2)
    running.stop()
    assert sorted(n for _, n in effects(database_url)) == [1, 5]
    assert outbox_count(database_url) == 2
