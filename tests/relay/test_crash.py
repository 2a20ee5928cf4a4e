"""The relay as a real process: kill -9, several instances, graceful shutdown."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.harness.kafka import create_topic
from tests.relay.conftest import (
    check_kafka_order,
    consume_topic,
    delivered_ids,
    expected_order,
    insert_events,
    kill_hard,
    make_events,
    pending,
    spawn_relay,
)


class Writer(threading.Thread):
    """Commits small transactions of events for a while, like a busy service."""

    def __init__(self, url: str, transactions: int, per_txn: int = 25,
                 aggregates: int = 60) -> None:
        super().__init__(daemon=True)
        self.url, self.transactions, self.per_txn = url, transactions, per_txn
        self.aggregates = aggregates
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.transactions):
                insert_events(self.url, make_events(self.per_txn, self.aggregates,
                                                    start=n * self.per_txn))
                self.written += self.per_txn
                time.sleep(0.02)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def wait_drained(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pending(url):
        assert time.monotonic() < deadline, f"{pending(url)} rows still pending"
        time.sleep(0.2)


def wait_started(log: Path, count: int, timeout: float = 30) -> None:
    """Wait until ``count`` relays have logged their start (signal handlers are set)."""
    deadline = time.monotonic() + timeout
    while (log.read_text().count('"relay_start"') if log.exists() else 0) < count:
        assert time.monotonic() < deadline, "relay did not start"
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def kill_9_repeatedly(outbox_url: str, kafka_bootstrap: str, prefix: str, log: Path, *,
                      backlog: int, transactions: int, kills: int, seed: int,
                      relay_args: tuple[str, ...] = (),
                      order_table: str = "outbox",
                      before_stop: Callable[[], None] | None = None) -> tuple[int, int]:
    """A backlog plus a busy writer; relays killed with SIGKILL mid-batch ``kills`` times,
    then one left to drain. Checks nothing is lost and per-aggregate order holds; returns
    (events written, duplicates in Kafka)."""
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=4)
    insert_events(outbox_url, make_events(backlog, aggregates=60))  # to be mid-batch in
    writer = Writer(outbox_url, transactions=transactions)
    writer.start()
    rng = random.Random(seed)
    for n in range(kills):
        proc = spawn_relay(outbox_url, kafka_bootstrap, prefix, "--batch-size", "200",
                           *relay_args, log=log)
        wait_started(log, n + 1)
        time.sleep(rng.uniform(0.3, 1.0))
        kill_hard(proc)
    writer.join(120)
    assert writer.error is None
    proc = spawn_relay(outbox_url, kafka_bootstrap, prefix, *relay_args, log=log)
    wait_started(log, kills + 1)
    try:
        wait_drained(outbox_url)
        if before_stop is not None:
            before_stop()  # while the last relay still runs
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    total = backlog + writer.written
    records = consume_topic(kafka_bootstrap, topic, total)
    duplicates = check_kafka_order(records, expected_order(outbox_url, order_table))
    assert len(records) == total + duplicates
    return total, duplicates


@pytest.mark.slow
def test_kill_9_mid_batch_repeatedly_loses_nothing_and_keeps_order(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    total, duplicates = kill_9_repeatedly(outbox_url, kafka_bootstrap, prefix,
                                          tmp_path / "relay.log", backlog=20000,
                                          transactions=80, kills=6, seed=4)
    print(f"kill -9 x6: {total} events, {duplicates} duplicates (re-sent unmarked rows)")


def wait_until(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, message
        time.sleep(0.2)


# A copy of every outbox row as it is inserted: with --retention 0 the relay deletes rows
# once Kafka has them, so the order Kafka must show is read from here.
COPY_ROWS = """
create table outbox_copy (seq bigint, id uuid, aggregateid text);
create function copy_outbox_row() returns trigger language plpgsql as $$
begin insert into outbox_copy values (new.seq, new.id, new.aggregateid); return null; end $$;
create trigger copy_outbox_row after insert on outbox for each row
  execute function copy_outbox_row();
"""


@pytest.mark.slow
def test_kill_9_with_retention_0_deletes_rows_and_loses_nothing(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """Delete-on-delivery mode: a row is deleted only after Kafka acknowledged it, and
    every delivered row is deleted by the next purge (every second here)."""
    with psycopg.connect(outbox_url) as conn:
        conn.execute(COPY_ROWS)

    def left() -> int:
        with psycopg.connect(outbox_url) as conn:
            row = conn.execute("select count(*) from outbox").fetchone()
        return int(row[0]) if row else -1

    kill_9_repeatedly(outbox_url, kafka_bootstrap, prefix, tmp_path / "relay.log",
                      backlog=10000, transactions=40, kills=3, seed=7,
                      relay_args=("--retention", "0", "--purge-interval", "1"),
                      order_table="outbox_copy", before_stop=lambda: wait_until(
                          lambda: left() == 0, 30, "delivered rows were not deleted"))
    assert left() == 0


@pytest.mark.slow
def test_three_instances_with_random_kills(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=4)
    log = tmp_path / "relays.log"
    insert_events(outbox_url, make_events(8000, aggregates=60, start=-8000))
    procs = [spawn_relay(outbox_url, kafka_bootstrap, prefix, "--batch-size", "100", log=log)
             for _ in range(3)]
    wait_started(log, 3)
    writer = Writer(outbox_url, transactions=120)
    writer.start()
    rng = random.Random(3)
    started = 3
    try:
        for _ in range(6):
            time.sleep(rng.uniform(0.8, 2.0))
            victim = rng.randrange(3)
            kill_hard(procs[victim])
            procs[victim] = spawn_relay(outbox_url, kafka_bootstrap, prefix,
                                        "--batch-size", "100", log=log)
            started += 1
            wait_started(log, started)
        writer.join(120)
        assert writer.error is None
        wait_drained(outbox_url)
        # All three share the shards once things settle.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with psycopg.connect(outbox_url) as conn:
                owners = conn.execute(
                    "select count(*) from pg_locks where locktype = 'advisory' "
                    "and classid = 185335810 and objsubid = 2 "
                    "and database = (select oid from pg_database "
                    "where datname = current_database()) group by pid").fetchall()
            counts = sorted(int(r[0]) for r in owners)
            # Each aims at ceil(256 / 3) = 86, so the last one gets what is left (>= 84).
            if len(counts) == 3 and sum(counts) == 256 and counts[-1] <= 86:
                break
            time.sleep(0.5)
        assert len(counts) == 3 and sum(counts) == 256 and counts[-1] <= 86, counts
    finally:
        codes = [stop(p) for p in procs]
    assert codes == [0, 0, 0], log.read_text()[-3000:]
    total = 8000 + writer.written
    records = consume_topic(kafka_bootstrap, topic, total)
    duplicates = check_kafka_order(records, expected_order(outbox_url))
    assert len(records) == total + duplicates
    print(f"3 instances, 6 kills: {total} events, {duplicates} duplicates")


@pytest.mark.slow
def test_graceful_shutdown_leaves_nothing_produced_but_unmarked(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=3)
    insert_events(outbox_url, make_events(20000, aggregates=100))
    log = tmp_path / "relay.log"
    # linger.ms: each batch waits 20 ms in librdkafka, so the 40 batches take ~0.4 s
    # (pipeline depth 2); without it the relay drains them all before the signal lands.
    proc = spawn_relay(outbox_url, kafka_bootstrap, prefix, "--batch-size", "500",
                       "--kafka-config", "linger.ms=20", log=log)
    wait_started(log, 1)
    deadline = time.monotonic() + 60
    while pending(outbox_url) == 20000:  # stop it mid-stream, once it has started
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stop(proc) == 0, log.read_text()[-3000:]
    published = 20000 - pending(outbox_url)
    assert 0 < published < 20000, "the relay should have been stopped mid-stream"
    records = consume_topic(kafka_bootstrap, topic, published, timeout=30)
    marked = delivered_ids(outbox_url)
    in_kafka = [(r.header("id") or b"").decode() for r in records]
    assert set(in_kafka) == marked, "a row reached Kafka but was not marked (or vice versa)"
    assert len(in_kafka) == len(marked), "duplicates after a graceful stop"
    assert "relay_stop" in log.read_text()


@pytest.mark.slow
def test_second_signal_exits_at_once(outbox_url: str, kafka_bootstrap: str, prefix: str,
                                     tmp_path: Path) -> None:
    log = tmp_path / "relay.log"
    # The broker answers (the start-up checks pass), but the producer holds every record
    # for a minute (linger.ms): the first signal's drain would wait for the shutdown timeout.
    proc = spawn_relay(outbox_url, kafka_bootstrap, prefix, "--shutdown-timeout", "60",
                       "--kafka-config", "linger.ms=60000", "--kafka-config",
                       "message.timeout.ms=120000", log=log)
    insert_events(outbox_url, make_events(10, aggregates=2))
    wait_started(log, 1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "first signal should drain, not exit"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 130
    assert time.monotonic() - started < 5
