"""Relay and Debezium side by side: backlog drain rate and commit-to-Kafka latency.

    .venv/bin/python bench/cdc.py                          # 20,000 events; 200 events/s for 15 s
    .venv/bin/python bench/cdc.py --events 5000 --rate 100 --seconds 10

Same database, same rows, same machine, one run. For each path (relay: one in-process
``Relay``; CDC: Debezium 3.6 on the local Kafka Connect worker) on its own topic namespace:

1. **Drain**: N events (~300-byte payloads, 1,000 aggregates) are committed while the
   path is stopped (relay not started / connector paused); then it is started and the
   time until the last record is in Kafka gives events/s.
2. **Latency**: a writer commits one event per transaction at a steady rate; a reader
   records when each event id arrives; latency = arrival - commit (same host clock, reader
   included, identical for both paths). Reported p50/p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer as KafkaConsumer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from connect.client import ConnectClient  # noqa: E402
from connect.config import CdcOptions, render  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.publish import Event, publish  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from relay.loop import Relay, RelayOptions  # noqa: E402
from services.demo import fresh_database  # noqa: E402
from services.launcher import load_stack_env  # noqa: E402

PAYLOAD_PAD = "x" * 220


class Reader:
    """Records the arrival time of every event id on the topics of one namespace."""

    def __init__(self, bootstrap: str, pattern: str) -> None:
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()
        self.consumer = KafkaConsumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500, "fetch.wait.max.ms": 10})
        self.consumer.subscribe([pattern])
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(1000, 0.05):
                if msg.error() is None:
                    raw = msg.headers() or []
                    for key, value in (raw.items() if isinstance(raw, dict) else raw):
                        if key == "id" and isinstance(value, bytes):
                            self.arrived.setdefault(value.decode(), time.time())
        self.consumer.close()

    def wait_for(self, ids: set[str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ids <= self.arrived.keys():
                return max(self.arrived[i] for i in ids)
            time.sleep(0.02)
        raise TimeoutError(f"{len(ids - self.arrived.keys())} events never arrived")


def write_backlog(url: str, n: int) -> list[str]:
    ids: list[str] = []
    with psycopg.connect(url) as conn:
        for start in range(0, n, 500):
            events = [Event("order", f"agg-{i % 1000}", "Happened", {"i": i, "pad": PAYLOAD_PAD})
                      for i in range(start, min(n, start + 500))]
            publish(conn, *events)
            conn.commit()
            ids += [str(e.id) for e in events]
    return ids


def steady_writer(url: str, rate: float, seconds: float) -> dict[str, float]:
    committed: dict[str, float] = {}
    # Commits wait for their WAL flush, as in production: the dev cluster's
    # synchronous_commit=off would otherwise leave the WAL for the WAL writer to flush
    # every wal_writer_delay (200 ms), and logical decoding only sends flushed WAL.
    with psycopg.connect(url, options="-c synchronous_commit=on") as conn:
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            (event,) = publish(conn, Event("order", f"agg-{i % 1000}", "Happened",
                                           {"i": i, "pad": PAYLOAD_PAD}))
            conn.commit()
            committed[str(event.id)] = time.time()
    return committed


def latency(reader: Reader, committed: dict[str, float]) -> tuple[float, float]:
    reader.wait_for(set(committed), 60)
    values = [reader.arrived[i] - t for i, t in committed.items()]
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


def bench_relay(admin: str, bootstrap: str, run_id: str,
                args: argparse.Namespace) -> dict[str, float]:
    """Drain and latency of one in-process relay on a fresh database."""
    url = fresh_database(admin, "bench_cdc_relay")
    template = f"benchrelay{run_id}-{{aggregatetype}}"
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap,
                        topic_template=template)
    migrate.upgrade(settings)
    reader = Reader(bootstrap, f"^benchrelay{run_id}-.*")
    ids = write_backlog(url, args.events)
    relay = Relay(settings, RelayOptions(poll_interval=0.05, listen=False))
    started = time.time()
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    drained = reader.wait_for(set(ids), 600) - started
    p50, p99 = latency(reader, steady_writer(url, args.rate, args.seconds))
    relay.request_stop()
    thread.join(30)
    reader.stop.set()
    return {"rate": args.events / drained, "p50": p50, "p99": p99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a property of the rendered connector config "
                             "(repeatable), e.g. --set poll.interval.ms=500")
    parser.add_argument("--skip-relay", action="store_true", help="measure Debezium only")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    load_stack_env()
    admin = os.environ["OUTBOX_DATABASE_URL"]
    bootstrap = os.environ["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
    connect_url = os.environ["OUTBOX_CONNECT_URL"]
    run_id = uuid.uuid4().hex[:6]
    results: dict[str, dict[str, Any]] = {}

    # --- relay ---
    if not args.skip_relay:
        results["relay"] = bench_relay(admin, bootstrap, run_id, args)

    # --- Debezium ---
    url = fresh_database(admin, "bench_cdc_debezium")
    template = f"benchcdc{run_id}-{{aggregatetype}}"
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap,
                        topic_template=template, connect_url=connect_url)
    migrate.upgrade(settings)
    name = f"bench-cdc-{run_id}"
    options = CdcOptions(name=name, password_ref="${env:OUTBOX_STACK_PG_PASSWORD}")
    client = ConnectClient(connect_url)
    reader = Reader(bootstrap, f"^benchcdc{run_id}-.*")
    slot = render(settings, options)["slot.name"]
    try:
        config = {**render(settings, options), **overrides}
        client.put_config(name, config)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(url) as conn:
                if conn.execute("select 1 from pg_replication_slots where slot_name = %s",
                                (slot,)).fetchone():
                    break
            time.sleep(0.2)
        time.sleep(2)
        client.pause(name)
        time.sleep(2)
        ids = write_backlog(url, args.events)
        started = time.time()
        client.resume(name)
        drained = reader.wait_for(set(ids), 600) - started
        p50, p99 = latency(reader, steady_writer(url, args.rate, args.seconds))
        results["debezium"] = {"rate": args.events / drained, "p50": p50, "p99": p99}
    finally:
        reader.stop.set()
        client.delete(name)
        time.sleep(3)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                         "where slot_name = %s and not active", (slot,))
        with psycopg.connect(admin, autocommit=True) as conn:
            for db in ("bench_cdc_relay", "bench_cdc_debezium"):
                conn.execute(f'drop database if exists "{db}" with (force)')
    if overrides:
        print(f"connector overrides: {overrides}")
    print(f"backlog of {args.events} events; steady {args.rate:g} events/s for "
          f"{args.seconds:g} s")
    print(f"{'path':<10} {'drain events/s':>15} {'p50 ms':>8} {'p99 ms':>8}")
    for path, r in results.items():
        print(f"{path:<10} {r['rate']:>15,.0f} {r['p50'] * 1000:>8.1f} {r['p99'] * 1000:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
