"""The idempotent consumer against real PostgreSQL and Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from sqlalchemy import text
from sqlalchemy.orm import Session

from consumers import ConsumerOptions, IncomingEvent
from consumers.runtime import EXIT_FENCED
from outbox.cli import main
from tests.consumers.app import CREATE_EFFECTS, Running, apply_effect, build
from tests.harness.kafka import Header, consume_all, create_topic, produce, wait_for_topic
from tests.harness.stack import ROOT

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


@pytest.fixture
def topic_ready(kafka_bootstrap: str, topic: str) -> str:
    create_topic(kafka_bootstrap, topic, partitions=2)
    return topic


def test_the_same_event_delivered_twice_has_one_effect(
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    eid = uuid.uuid4()
    produce(kafka_bootstrap, topic_ready, [thing(1, event_id=eid), thing(1, event_id=eid),
                                           thing(2)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g1"))
    wait_for(lambda: len(effects(database_url)) == 2)
    running.stop()
    assert outbox_count(database_url) == 2
    assert running.app.metrics.duplicates._value.get() == 1
    assert sorted(n for _, n in effects(database_url)) == [1, 2]


def test_replay_from_offset_zero_is_deduplicated(
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    produce(kafka_bootstrap, topic_ready, [thing(n, key=f"k{n % 3}") for n in range(20)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-replay"))
    wait_for(lambda: len(effects(database_url)) == 20)
    running.stop()
    # Rewind the group to offset 0 with Kafka's own tooling semantics: commit offset 0.
    kc = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": "g-replay",
             "enable.auto.commit": False})
    kc.commit(offsets=[TopicPartition(topic_ready, p, 0) for p in (0, 1)], asynchronous=False)
    kc.close()
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-replay"))
    wait_for(lambda: running.app.metrics.duplicates._value.get() >= 20)
    running.stop()
    assert len(effects(database_url)) == 20
    assert outbox_count(database_url) == 20


def test_handler_failure_rolls_back_its_writes_and_events_then_retry_succeeds(
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    calls = {"n": 0}

    def flaky(session: Session, event: IncomingEvent) -> None:
        apply_effect(session, event)  # writes a row and an outbox event ...
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("boom")  # ... that must roll back

    produce(kafka_bootstrap, topic_ready, [thing(1), thing(2)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g2", handler=flaky))
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
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    produce(kafka_bootstrap, topic_ready,
            [thing(0)] + [m for _, m in POISON] + [thing(1)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g3"))
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
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    broken = {"on": True}

    def handler(session: Session, event: IncomingEvent) -> None:
        if broken["on"] and event.payload.get("n") == 1:
            raise ValueError("cannot handle n=1 yet")
        apply_effect(session, event)

    eid = uuid.uuid4()
    produce(kafka_bootstrap, topic_ready, [thing(1, event_id=eid), thing(2)])
    app = build(database_url, kafka_bootstrap, topic_ready, "g4", handler=handler,
                options=ConsumerOptions(max_attempts=3, backoff_base=0.05, backoff_cap=0.1,
                                        poll_timeout=0.2))
    running = Running(app)
    wait_for(lambda: len(effects(database_url)) == 1)
    wait_for_topic(kafka_bootstrap, topic_ready + ".dlq", 60)
    letters = consume_all(kafka_bootstrap, topic_ready + ".dlq", expected=1, idle=0.5)
    assert [r.header("dlq.reason") for r in letters] == [b"handler-failed"]
    assert letters[0].header("dlq.attempts") == b"3"
    assert letters[0].header("dlq.exception.class") == b"ValueError"
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
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    produce(kafka_bootstrap, topic_ready, [thing(n, key=f"k{n}") for n in range(10)])
    cmd = [sys.executable, "-m", "tests.consumers.app", database_url, kafka_bootstrap,
           topic_ready, "g5"]
    env = {**os.environ, "OUTBOX_TEST_CRASH_AFTER_DB_COMMIT": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    applied = len(effects(database_url))
    assert applied > 0  # the DB commit happened, the offset commit did not
    proc2 = subprocess.Popen(cmd[:], cwd=ROOT, env={**os.environ})
    try:
        # The restarted consumer is redelivered what the killed one applied but did not
        # commit; it must skip it and commit the offsets this time.
        wait_for(lambda: committed(kafka_bootstrap, topic_ready, "g5") == 10, timeout=60)
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(30) == 0
    assert sorted(n for _, n in effects(database_url)) == list(range(10))
    assert outbox_count(database_url) == 10


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


def test_inbox_purge(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute("insert into inbox (consumer_group, event_id, processed_at) "
                     "select 'g', gen_random_uuid(), now() - interval '10 days' "
                     "from generate_series(1, 30)")
        conn.execute("insert into inbox (consumer_group, event_id) values ('g', gen_random_uuid())")
    result = CliRunner().invoke(main, ["inbox", "purge", "--older-than", "7d"],
                                env={"OUTBOX_DATABASE_URL": database_url})
    assert result.exit_code == 0, result.output
    assert "purged 30" in result.output
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from inbox").fetchone() == (1,)


def test_a_failing_commit_rewinds_the_batch_instead_of_crashing(
        database_url: str, kafka_bootstrap: str, topic_ready: str) -> None:
    # A deferred constraint fails at COMMIT, after every handler returned: no message can
    # be blamed. The first two commits (fast path, then careful path) fail; the third holds.
    with psycopg.connect(database_url) as conn:
        conn.execute("create table guard (k int unique deferrable initially deferred)")
        conn.execute("insert into guard values (1)")
    calls = 0

    def handler(session: Session, event: IncomingEvent) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            session.execute(text("insert into guard values (1)"))
        apply_effect(session, event)

    produce(kafka_bootstrap, topic_ready, [thing(1)])
    running = Running(build(database_url, kafka_bootstrap, topic_ready, "g-commit", handler))
    wait_for(lambda: len(effects(database_url)) == 1)
    assert running.thread.is_alive(), "the consumer crashed on a failed commit"
    running.stop()
    assert calls == 3 and len(effects(database_url)) == 1


@pytest.mark.slow
def test_a_static_member_restarted_after_kill_9_takes_its_partitions_back_at_once(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path) -> None:
    """With ``instance_id`` the group does not wait for the killed member's session
    timeout (60 s here) to hand its partitions to its restart."""
    ensure_effects(database_url)
    cmd = [sys.executable, "-m", "tests.consumers.app", database_url, kafka_bootstrap,
           topic_ready, f"g-static-{uuid.uuid4().hex[:8]}", "static-1"]
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    produce(kafka_bootstrap, topic_ready, [thing(1, key="k1"), thing(2, key="k2")])
    wait_for(lambda: len(effects(database_url)) == 2, timeout=60)
    first.kill()
    first.wait(10)
    restarted = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        produce(kafka_bootstrap, topic_ready, [thing(3, key="k1"), thing(4, key="k2")])
        started = time.monotonic()
        wait_for(lambda: len(effects(database_url)) == 4, timeout=60)
        assert time.monotonic() - started < 30, "waited for the dead member's session"
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(30) == 0
        log.close()


@pytest.mark.slow
def test_two_live_processes_with_one_instance_id_the_fenced_one_exits_saying_why(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tests.consumers.app", database_url, kafka_bootstrap,
           topic_ready, f"g-fenced-{uuid.uuid4().hex[:8]}", "same-id"]
    ensure_effects(database_url)
    first_log = tmp_path / "first.log"
    with first_log.open("wb") as out:
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    produce(kafka_bootstrap, topic_ready, [thing(1, key="k1")])
    wait_for(lambda: len(effects(database_url)) == 1, timeout=60)
    with (tmp_path / "second.log").open("wb") as out:
        second = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert first.wait(60) == EXIT_FENCED, first_log.read_text()[-2000:]
        assert "two live processes must not share one" in first_log.read_text()
        produce(kafka_bootstrap, topic_ready, [thing(2, key="k2")])
        wait_for(lambda: len(effects(database_url)) == 2, timeout=60)  # the second goes on
    finally:
        if first.poll() is None:
            first.kill()
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0


@pytest.mark.slow
def test_a_static_member_that_comes_back_with_other_topics_is_given_them(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path) -> None:
    """Kafka hands a returning static member its old assignment without a rebalance; the
    id carries a hash of the topics, so a deploy that subscribes to another topic joins as
    a new member and gets it (after the old member's session, 10 s here)."""
    ensure_effects(database_url)
    group = f"g-topics-{uuid.uuid4().hex[:8]}"
    other = f"{topic_ready}-other"
    create_topic(kafka_bootstrap, other, partitions=2)
    def deploy(topic: str, applied: int) -> None:
        """Start the instance on ``topic``, see one more event applied, stop it."""
        with (tmp_path / "consumers.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.consumers.app", database_url, kafka_bootstrap,
                 topic, group, "deploy-1", "10000"], cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT)
        try:
            produce(kafka_bootstrap, topic, [thing(applied, key="k1")])
            wait_for(lambda: len(effects(database_url)) == applied, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0

    deploy(topic_ready, 1)
    deploy(other, 2)  # the same instance id, another topic
