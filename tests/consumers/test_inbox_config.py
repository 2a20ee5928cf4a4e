"""A consumer whose inbox is missing or refused: one line and exit 3, at start or when it
happens while running, and never a message dead-lettered for it (the messages wait,
uncommitted, and are applied once it is fixed). Real PostgreSQL and Kafka."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.exit_codes import EXIT_CONFIG
from outbox.settings import Settings
from tests.consumers.support import thing, wait_for
from tests.harness import db
from tests.harness.kafka import produce

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

PASSWORD = "inbox-test-pw"
CONSUMER_GRANTS = ["grant usage on schema public to {role}",
                   "grant select, insert, delete on inbox to {role}"]


@pytest.fixture
def login(database_url: str) -> Iterator[Callable[[list[str]], str]]:
    """A login role of this test given ``grants``; its URL."""
    yield from db.login_roles(database_url, PASSWORD, "t_inbox")


def app_of(url: str, bootstrap: str, topic: str, seen: list[int],
           kind: str = "sync") -> Consumer:
    """A consumer noting the ``n`` of each Thing; ``kind``: its handler sync or async."""
    app = Consumer(Settings(database_url=url, kafka_bootstrap_servers=bootstrap), "g-inbox",
                   options=ConsumerOptions(backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
                                           max_attempts=2))

    def handle(event: IncomingEvent) -> None:
        seen.append(int(event.payload["n"]))

    async def handle_async(event: IncomingEvent) -> None:
        seen.append(int(event.payload["n"]))

    app.add_handler(topic, "Thing", handle if kind == "sync" else handle_async)
    return app


def letters(bootstrap: str, topic: str) -> int:
    probe = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": "inbox-probe"})
    try:
        info = probe.list_topics(topic, timeout=10).topics.get(topic)
        if info is None or info.error is not None:
            return 0
        return sum(probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in info.partitions)
    finally:
        probe.close()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_no_inbox_table_is_one_line_and_exit_3(
        database_url: str, kafka_bootstrap: str, topic_ready: str,
        caplog: pytest.LogCaptureFixture) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop table inbox")
    produce(kafka_bootstrap, topic_ready, [thing(1)])
    seen: list[int] = []
    assert app_of(database_url, kafka_bootstrap, topic_ready, seen).run() == EXIT_CONFIG
    assert errors(caplog) == ['no inbox table "public"."inbox": run `outbox db upgrade` '
                              '(same --schema) first']
    assert seen == [] and letters(kafka_bootstrap, topic_ready + ".dlq") == 0


def test_a_role_that_may_not_write_the_inbox_is_one_line_and_exit_3(
        login: Callable[[list[str]], str], kafka_bootstrap: str, topic_ready: str,
        caplog: pytest.LogCaptureFixture) -> None:
    url = login(["grant usage on schema public to {role}", "grant select on inbox to {role}"])
    produce(kafka_bootstrap, topic_ready, [thing(1)])
    assert app_of(url, kafka_bootstrap, topic_ready, []).run() == EXIT_CONFIG
    [line] = errors(caplog)
    assert "may not use the inbox" in line and "grant it SELECT, INSERT" in line
    assert PASSWORD not in caplog.text
    assert letters(kafka_bootstrap, topic_ready + ".dlq") == 0


def test_the_inbox_refused_while_running_stops_it_and_nothing_is_lost(
        database_url: str, login: Callable[[list[str]], str], kafka_bootstrap: str,
        topic_ready: str, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    url = login(CONSUMER_GRANTS)
    role = url.split("//", 1)[1].split(":", 1)[0]
    seen: list[int] = []
    app = app_of(url, kafka_bootstrap, topic_ready, seen, kind)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(app.run()))
    thread.start()
    try:
        produce(kafka_bootstrap, topic_ready, [thing(1)])
        wait_for(lambda: seen == [1])
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"revoke insert on inbox from {role}")
        produce(kafka_bootstrap, topic_ready, [thing(2), thing(3)])
        thread.join(60)
    finally:
        app.request_stop()
        thread.join(30)
    assert codes == [EXIT_CONFIG]
    [line] = errors(caplog)
    assert "refused this consumer: permission denied for table inbox" in line
    assert letters(kafka_bootstrap, topic_ready + ".dlq") == 0
    # Granted again, the same group applies what waited, in order, once.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"grant insert on inbox to {role}")
    again = app_of(url, kafka_bootstrap, topic_ready, seen, kind)
    thread = threading.Thread(target=again.run)
    thread.start()
    try:
        wait_for(lambda: seen[1:] == [2, 3], timeout=60)
        time.sleep(1)
    finally:
        again.request_stop()
        thread.join(30)
    assert seen == [1, 2, 3]
