"""Relay test helpers: an outbox database, event writers, relay runners, Kafka checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import MetaData, create_engine, insert

from outbox.publish import Event, publish
from outbox.settings import Settings, load_settings
from outbox.tables import outbox_table
from relay.loop import Relay, RelayOptions
from relay.queries import Queries
from tests.harness.kafka import Record, consume_all

ROOT = Path(__file__).resolve().parents[2]
OUTBOX_BIN = ROOT / ".venv" / "bin" / "outbox"


def ensure_outbox(url: str) -> None:
    """The outbox table: the template database has it from the migrations; create_all
    (checkfirst) keeps these tests independent of how the template is built."""
    engine = create_engine("postgresql+psycopg://" + url[len("postgresql://"):])
    metadata = MetaData()
    outbox_table(metadata)
    metadata.create_all(engine, checkfirst=True)
    engine.dispose()


@pytest.fixture
def outbox_url(database_url: str) -> str:
    ensure_outbox(database_url)
    return database_url


@pytest.fixture
def prefix() -> str:
    """A topic prefix unique to this test: topics are ``<prefix>-<aggregatetype>``."""
    return f"rt{uuid.uuid4().hex[:8]}"


def relay_settings(url: str, bootstrap: str, prefix: str, **extra: Any) -> Settings:
    return load_settings(database_url=url, kafka_bootstrap_servers=bootstrap,
                         topic_template=prefix + "-{aggregatetype}", **extra)


def insert_events(url: str, events: list[dict[str, Any]], *,
                  raw: bool = False) -> list[dict[str, Any]]:
    """Commit ``events`` in one transaction with ``publish()``; returns them with their ids.

    ``raw=True`` inserts with SQLAlchemy Core instead, for rows ``publish()`` would refuse
    (a payload over its limit ...) but another writer, in another language, could store:
    the relay must cope with those too.
    """
    if not raw:
        published = [Event(aggregate_type=e["aggregatetype"], aggregate_id=e["aggregateid"],
                           event_type=e.get("type", "Happened"), payload=e.get("payload", {}),
                           correlation_id=e.get("correlation_id"),
                           causation_id=e.get("causation_id"),
                           traceparent=e.get("traceparent"))
                     for e in events]
        with psycopg.connect(url) as conn:  # commits on leaving the block
            publish(conn, *published)
        return [{**e, "id": ev.id, "type": ev.event_type} for e, ev in zip(events, published,
                                                                             strict=True)]
    engine = create_engine("postgresql+psycopg://" + url[len("postgresql://"):])
    table = outbox_table(MetaData())
    rows = []
    for event in events:
        full = {"id": uuid.uuid4(), "type": "Happened", "payload": {}, "correlation_id": None,
                "causation_id": None, "traceparent": None, **event}
        rows.append(full)
    with engine.begin() as conn:
        conn.execute(insert(table), rows)
    engine.dispose()
    return rows


def make_events(count: int, aggregates: int, aggregatetype: str = "order",
                start: int = 0) -> list[dict[str, Any]]:
    return [{"aggregatetype": aggregatetype, "aggregateid": f"agg-{i % aggregates}",
             "type": "Step", "payload": {"n": start + i, "agg": f"agg-{i % aggregates}",
                                         "pad": "x" * 50}}
            for i in range(count)]


# Whether outbox row ``o`` reached Kafka: marked, or covered by the relay's cursor.
DELIVERED = Queries("public", "outbox").delivered("o")


def pending(url: str) -> int:
    """Rows not delivered yet (parked ones included)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"select count(*) from outbox o where not {DELIVERED}").fetchone()
    return int(row[0]) if row else -1


def delivered_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(r[0]) for r in conn.execute(f"select id from outbox o where {DELIVERED}")}


def expected_order(url: str, table: str = "outbox") -> dict[str, list[str]]:
    """aggregateid -> event ids in seq order (the order Kafka must show)."""
    out: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        for agg, event_id in conn.execute(
                f"select aggregateid, id from {table} order by seq"):  # a test's own table
            out.setdefault(agg, []).append(str(event_id))
    return out


def check_kafka_order(records: list[Record], expected: dict[str, list[str]]) -> int:
    """No loss, per-key first-seen order equals seq order; returns the duplicate count."""
    seen: dict[str, list[str]] = {}
    ids: set[str] = set()
    duplicates = 0
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event_id = (record.header("id") or b"").decode()
        if event_id in ids:
            duplicates += 1
            continue
        ids.add(event_id)
        seen.setdefault((record.key or b"").decode(), []).append(event_id)
    assert set(seen) == set(expected)
    for key, want in expected.items():
        assert seen[key] == want, f"aggregate {key}: order or content differs"
    return duplicates


def consume_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Record]:
    return consume_all(bootstrap, topic, expected=expected, timeout=timeout, idle=1.0)


@dataclass
class ThreadRelay:
    relay: Relay
    thread: threading.Thread
    result: list[int]

    def stop(self, timeout: float = 30) -> int:
        self.relay.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "relay did not stop"
        return self.result[0]


@pytest.fixture
def start_relay() -> Iterator[Any]:
    """Start in-process relays (threads); all are stopped at the end of the test."""
    running: list[ThreadRelay] = []

    def start(settings: Settings, **options: Any) -> ThreadRelay:
        opts = RelayOptions(**{"poll_interval": 0.2, "rebalance_interval": 0.5, **options})
        relay = Relay(settings, opts)
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(relay.run()), daemon=True)
        thread.start()
        handle = ThreadRelay(relay, thread, result)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if handle.thread.is_alive():
            handle.stop()


def spawn_relay(url: str, bootstrap: str, prefix: str, *args: str,
                log: Path | None = None) -> subprocess.Popen[bytes]:
    """``outbox relay run`` as a separate process (for kill -9 and signal tests); one
    relay process (``--processes 1``) unless ``args`` ask for more."""
    if "--processes" not in args:
        args = ("--processes", "1", *args)
    env = {**os.environ, "OUTBOX_DATABASE_URL": url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": prefix + "-{aggregatetype}"}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [str(OUTBOX_BIN) if OUTBOX_BIN.exists() else sys.executable, "relay", "run",
         "--poll-interval", "0.2", "--rebalance-interval", "0.5", *args],
        env=env, stdout=out, stderr=out)


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
