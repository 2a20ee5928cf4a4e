"""Consumer benchmark: the deduped consumer (sync and async handlers) against the same
consumer without dedupe and against a plain confluent-kafka loop, same messages, same run.

    .venv/bin/python bench/consumer.py                  # 20,000 events, 2 rounds
    .venv/bin/python bench/consumer.py --events 5000    # a quick look

The handler writes one row. Variants, each with its own consumer group on the same topic,
in an order rotated over rounds:

- **dedupe**: the consumer with a sync handler (``Session``): inbox rows and handler in
  one transaction per batch, offsets after the commit (the default);
- **async**: the same with an ``async def`` handler on an ``AsyncSession`` (the async
  engine, awaited on the consume loop's event loop);
- **no-dedupe**: the sync consumer with ``dedupe=False`` (the toolkit without its inbox);
- **plain**: a hand-written confluent-kafka loop doing the same insert without an inbox or
  any of the runtime: the same SQLAlchemy statement on a ``Session``, one transaction per
  batch, then a synchronous offset commit (like for like: what the runtime costs);
- **plain-psycopg**: the same loop on a bare psycopg connection (the native ceiling: what
  the runtime and SQLAlchemy cost together);
- **duplicates**: the dedupe group reading everything again from offset 0 (every event is
  skipped by the inbox), once per round after the others.

Reported: events/s of each, and per round async / dedupe, dedupe / plain (target >= 0.8),
dedupe / plain-psycopg and dedupe / no-dedupe. The clock of each runs from its first settled
batch (joining the group takes seconds, alike for all) to the last event's database commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, Producer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import RunNames, Spread  # noqa: E402
from consumers import Consumer, ConsumerOptions, IncomingEvent  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.settings import Settings  # noqa: E402

PARTITIONS = 4
BATCH = 500
INSERT = text("insert into effects (event_id, n) values (:id, :n)")
VARIANTS = ("dedupe", "async", "no-dedupe", "plain", "plain-psycopg")


def handler(session: Session, event: IncomingEvent) -> None:
    session.execute(INSERT, {"id": event.id, "n": event.payload["n"]})


async def handler_async(session: AsyncSession, event: IncomingEvent) -> None:
    await session.execute(INSERT, {"id": event.id, "n": event.payload["n"]})


def fill_topic(bootstrap: str, topic: str, events: int, size: int) -> None:
    common.create_topic(bootstrap, topic, PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n in range(events):
        value = json.dumps(common.payload(n, f"k{n % 1000}", size),
                           separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, key=f"k{n % 1000}".encode(), value=value,
                                 headers=[("id", str(uuid.uuid4()).encode()),
                                          ("eventType", b"Thing")])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def rewind(bootstrap: str, topic: str, group: str) -> None:
    kc = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        # The broker refuses an outside commit until the last member's leave is processed.
        for attempt in range(30):
            try:
                kc.commit(offsets=[TopicPartition(topic, p, 0) for p in range(PARTITIONS)],
                          asynchronous=False)
                return
            except KafkaException:
                if attempt == 29:
                    raise
                time.sleep(1)
    finally:
        kc.close()


def run(settings: Settings, topic: str, group: str, events: int, dedupe: bool,
        is_async: bool = False) -> float:
    """Events per second until the group has handled (or skipped) every event."""
    engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
    app = Consumer(settings, group, engine=engine,
                   options=ConsumerOptions(dedupe=dedupe, batch_size=BATCH, poll_timeout=0.1))
    app.add_handler(topic, "Thing", handler_async if is_async else handler)
    thread = threading.Thread(target=app.run, daemon=True)
    spawned = time.perf_counter()
    thread.start()

    def done() -> float:
        return float(app.metrics.handled._value.get() + app.metrics.duplicates._value.get())

    # The clock starts at the first settled batch, not at start(): joining the group takes
    # seconds and would flatten every variant towards the same rate.
    while (first := done()) == 0:
        time.sleep(0.001)
    started = time.perf_counter()
    while done() < events:
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    app.request_stop()
    thread.join(30)
    engine.dispose()
    if first >= events:
        # Everything came in the first batch (small runs): nothing left to time from it,
        # so from the start, joining the group included (a low figure, never a zero).
        return events / (started - spawned)
    return (events - first) / elapsed


def run_plain(settings: Settings, topic: str, group: str, events: int,
              raw_psycopg: bool) -> float:
    """The same insert from a hand-written loop: consume a batch, insert its rows in one
    transaction, commit the offsets; no inbox, no routing, no dead letters."""
    kafka = KafkaConsumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                           "group.id": group, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest",
                           "partition.assignment.strategy": "cooperative-sticky"})
    kafka.subscribe([topic])
    engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
    done = first = 0
    started = received = 0.0
    try:
        with psycopg.connect(settings.libpq_url()) as conn:
            while done < events:
                batch = [m for m in kafka.consume(BATCH, 0.1) if m.error() is None]
                if not batch:
                    continue
                received = received or time.perf_counter()
                rows = []
                for msg in batch:
                    raw = dict(msg.headers() or [])["id"]
                    rows.append({"id": raw.decode() if isinstance(raw, bytes) else str(raw),
                                 "n": json.loads(msg.value() or b"")["n"]})
                if raw_psycopg:
                    with conn.transaction():
                        for row in rows:
                            conn.execute("insert into effects (event_id, n) values "
                                         "(%(id)s, %(n)s)", row)
                else:
                    with Session(engine) as session, session.begin():
                        for row in rows:
                            session.execute(INSERT, row)
                kafka.commit(asynchronous=False)
                done += len(batch)
                if not first:
                    first, started = done, time.perf_counter()
        elapsed = time.perf_counter() - started
    finally:
        kafka.close()
        engine.dispose()
    if first == events:  # a tiny run: one batch took everything, time it whole
        return events / (time.perf_counter() - received)
    return (events - first) / elapsed


def measure(variant: str, settings: Settings, topic: str, group: str, events: int) -> float:
    """One round of ``variant`` with consumer group ``group``."""
    if variant.startswith("plain"):
        return run_plain(settings, topic, group, events, raw_psycopg=variant != "plain")
    return run(settings, topic, group, events, dedupe=variant != "no-dedupe",
               is_async=variant == "async")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=250, help="value bytes (bulk random)")
    args = parser.parse_args()
    common.load_env()
    admin = common.admin_url()
    bootstrap = common.bootstrap()
    names = RunNames.new("consumer")
    url = common.create_database(admin, names.database())
    topic = names.topic()
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap)
    try:
        migrate.upgrade(settings)
        with psycopg.connect(url) as conn:
            conn.execute("create table effects (event_id uuid, n int)")
        fill_topic(bootstrap, topic, args.events, args.size)
        rates: dict[str, list[float]] = {v: [] for v in (*VARIANTS, "duplicates")}
        for r in range(args.rounds):
            for variant in common.rotated(VARIANTS, r):
                rates[variant].append(measure(variant, settings, topic,
                                              names.group(variant, r), args.events))
            group = names.group("dedupe", r)
            rewind(bootstrap, topic, group)
            rates["duplicates"].append(run(settings, topic, group, args.events, True))
    finally:
        common.drop_database(admin, url)
        common.delete_topics(bootstrap, [topic])
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"run {names.run_id}: events per variant per round: {args.events} "
          f"({args.size} B values), rounds: {args.rounds}; load {common.machine_load()} "
          "(shared machine: development figures)")
    for variant, values in rates.items():
        print(f"{variant:<11} events/s {Spread.of(values).show()}")
    def ratio(a: str, b: str) -> Spread:
        return Spread.of(x / y for x, y in zip(rates[a], rates[b], strict=True))

    print(f"ratio async / dedupe (sync) per round: {ratio('async', 'dedupe').show('.2f')}")
    print(f"ratio dedupe / plain confluent-kafka loop per round: "
          f"{ratio('dedupe', 'plain').show('.2f')}  (target >= 0.8)")
    print(f"ratio async / plain per round: {ratio('async', 'plain').show('.2f')}")
    print(f"ratio dedupe / plain-psycopg (native ceiling) per round: "
          f"{ratio('dedupe', 'plain-psycopg').show('.2f')}")
    print(f"ratio dedupe / no-dedupe per round: {ratio('dedupe', 'no-dedupe').show('.2f')}")
    print(f"skipping a duplicate vs handling: {med['duplicates'] / med['dedupe']:.2f}x the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
