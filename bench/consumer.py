"""Consumer benchmark: deduped handling vs the same consumer without dedupe, same run.

    .venv/bin/python bench/consumer.py                  # 20,000 events, 2 rounds
    .venv/bin/python bench/consumer.py --events 5000    # a quick look

The handler writes one row. Variants, alternated over rounds on the same topic:
**dedupe** (inbox row + handler in one transaction per batch, the default),
**no-dedupe** (the same consumer with ``dedupe=False``: the ceiling), and
**duplicates** (the dedupe group reading everything again from offset 0: every event is
skipped by the inbox). Reported: events/s of each and dedupe / no-dedupe (target >= 0.5).
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
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import RunNames, Spread  # noqa: E402
from consumers import Consumer, ConsumerOptions, IncomingEvent  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.settings import Settings  # noqa: E402

PARTITIONS = 4


def handler(session: Session, event: IncomingEvent) -> None:
    session.execute(text("insert into effects (event_id, n) values (:id, :n)"),
                    {"id": event.id, "n": event.payload["n"]})


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


def run(settings: Settings, topic: str, group: str, events: int, dedupe: bool) -> float:
    """Events per second until the group has handled (or skipped) every event."""
    engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
    app = Consumer(settings, group, engine=engine,
                   options=ConsumerOptions(dedupe=dedupe, batch_size=500, poll_timeout=0.1))
    app.add_handler(topic, "Thing", handler)
    thread = threading.Thread(target=app.run, daemon=True)
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
    return (events - first) / elapsed


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
        rates: dict[str, list[float]] = {"dedupe": [], "no-dedupe": [], "duplicates": []}
        for r in range(args.rounds):
            group = names.group("dedupe", r)
            order = ["dedupe", "no-dedupe"] if r % 2 == 0 else ["no-dedupe", "dedupe"]
            for variant in order:
                if variant == "dedupe":
                    rates["dedupe"].append(run(settings, topic, group, args.events, True))
                else:
                    rates["no-dedupe"].append(run(settings, topic, names.group("plain", r),
                                                  args.events, False))
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
    ratio = Spread.of(d / p for d, p in zip(rates["dedupe"], rates["no-dedupe"], strict=True))
    print(f"ratio dedupe / no-dedupe per round: {ratio.show('.2f')}  (target >= 0.5)")
    print(f"skipping a duplicate vs handling: {med['duplicates'] / med['dedupe']:.2f}x the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
