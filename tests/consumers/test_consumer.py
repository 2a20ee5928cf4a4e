"""The consumer's group membership and the inbox CLI, against real PostgreSQL and Kafka.

What holds for every handler kind (dedupe, rollback and retry, poison, kill -9 between the
two commits, rebalance) is the contract suite, test_contract.py.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from consumers.inbox import InboxStore
from consumers.runtime import EXIT_FENCED
from outbox.cli import main
from outbox.settings import Settings
from tests.consumers.support import effects, ensure_effects, thing, wait_for
from tests.harness.kafka import create_topic, produce
from tests.harness.stack import ROOT


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


def test_inbox_purge_of_one_group_in_small_batches(database_url: str) -> None:
    """``purge(group=...)`` deletes only that group's old rows, over several batches."""
    with psycopg.connect(database_url) as conn:
        for group in ("a", "b"):
            conn.execute("insert into inbox (consumer_group, event_id, processed_at) "
                         "select %s, gen_random_uuid(), now() - interval '2 days' "
                         "from generate_series(1, 25)", (group,))
        conn.execute("insert into inbox (consumer_group, event_id) values ('a', gen_random_uuid())")
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        deleted = InboxStore(Settings()).purge(engine, dt.timedelta(days=1), "a", batch=10)
    finally:
        engine.dispose()
    assert deleted == 25
    with psycopg.connect(database_url) as conn:
        counts: dict[str, int] = dict(conn.execute("select consumer_group, count(*) from inbox "
                                   "group by consumer_group").fetchall())
    assert counts == {"a": 1, "b": 25}


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
