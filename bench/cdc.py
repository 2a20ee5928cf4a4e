"""Relay and Debezium on equal terms: burst throughput and commit -> consumed latency.

    .venv/bin/python bench/cdc.py                               # 3 rounds (+1 warm-up)
    .venv/bin/python bench/cdc.py --events 5000 --seconds 5 --rounds 2   # a quick look

Both paths run before anything is measured and stay running for the whole run: the relay
as ``outbox relay run`` (its own process, NOTIFY trigger installed, LISTEN on: the way it
is meant to run) on one database of the run, Debezium (the connector ``outbox connect
render`` writes) on another, each to its own topics. Each database gets the same rows:
saga-like events of ``--size`` bytes whose bulk is random, 1,000 aggregates. In every round,
in an order that rotates from round to round, after a warm-up round that is not counted:

1. **Burst**: ``--events`` rows written by ``--burst-transactions`` connections (disjoint
   aggregates), committed back to back; throughput = events / (first commit -> the last
   event consumed).
2. **Steady**: a writer process commits one event per transaction at ``--rate`` for
   ``--seconds`` (``synchronous_commit=on``, as production writers do: logical decoding
   only sends flushed WAL); commit -> consumed p50/p99.

The reader is one consumer per path that returns each message as it arrives
(``poll()``), so its delay is the same small one in both figures.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import RunNames, Spread, percentile  # noqa: E402
from bench.relay_instances import SHARES  # noqa: E402
from connect.client import ConnectClient  # noqa: E402
from connect.config import CdcOptions, render  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE  # noqa: E402
from outbox.publish import Event, publish  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from relay.queries import Queries  # noqa: E402

PATHS = ("relay", "debezium")


class Reader:
    """Stamps the arrival of every event id on one path's topics, message by message."""

    def __init__(self, pattern: str, group: str) -> None:
        self.arrived: dict[str, float] = {}
        self.stop = threading.Event()
        self.consumer = KafkaConsumer({
            "bootstrap.servers": common.bootstrap(), "group.id": group,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500, "fetch.wait.max.ms": 10})
        self.consumer.subscribe([pattern])
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)  # returns as soon as one message is there
            if msg is None or msg.error() is not None:
                continue
            event_id = common.event_id(msg)
            if event_id is not None:
                self.arrived.setdefault(event_id, time.time())
        self.consumer.close()

    def wait_for(self, ids: set[str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ids <= self.arrived.keys():
                return max(self.arrived[i] for i in ids)
            time.sleep(0.01)
        raise TimeoutError(f"{len(ids - self.arrived.keys())} of {len(ids)} events never "
                           "arrived")


def event(i: int, size: int) -> Event:
    agg = f"agg-{i % 1000}"
    return Event("order", agg, "Happened", common.payload(i, agg, size))


def burst(url: str, events: int, transactions: int, size: int) -> tuple[list[str], float]:
    """Write ``events`` rows in open transactions, commit them back to back; (ids, first)."""
    conns = [psycopg.connect(url) for _ in range(transactions)]
    ids: list[str] = []
    try:
        chunks: list[list[Event]] = [[] for _ in conns]
        for i in range(events):
            chunks[(i % 1000) % transactions].append(event(i, size))
        for conn, chunk in zip(conns, chunks, strict=True):
            for start in range(0, len(chunk), 500):
                publish(conn, *chunk[start:start + 500])
            ids += [str(e.id) for e in chunk]
        first = time.time()
        for conn in conns:
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    return ids, first


def steady_writer(url: str, rate: float, seconds: float, size: int, out: Any) -> None:
    """One event per transaction at ``rate``/s; sends {id: commit time} back."""
    committed: dict[str, float] = {}
    with psycopg.connect(url, options="-c synchronous_commit=on") as conn:
        started = time.monotonic()
        for i in range(int(rate * seconds)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            (ev,) = publish(conn, event(i, size))
            conn.commit()
            committed[str(ev.id)] = time.time()
    out.put(committed)


def steady(url: str, reader: Reader, args: argparse.Namespace) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=steady_writer, args=(url, args.rate, args.seconds, args.size,
                                                   queue))
    proc.start()
    committed: dict[str, float] = queue.get(timeout=args.seconds + 120)
    proc.join(30)
    reader.wait_for(set(committed), 120)
    values = sorted((reader.arrived[i] - t) * 1000 for i, t in committed.items())
    return percentile(values, 50), percentile(values, 99)


def start_relay(url: str, template: str) -> subprocess.Popen[bytes]:
    """``outbox relay run`` as a user runs it, waited for until it owns every shard."""
    from bench.relay_contenders import outbox_command

    env = {**os.environ, "OUTBOX_DATABASE_URL": url, "OUTBOX_TOPIC_TEMPLATE": template}
    proc = subprocess.Popen([*outbox_command(), "relay", "run", "--log-level", "warning",
                             "--log-format", "text"], env=env)
    deadline = time.monotonic() + 60
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            shares = conn.execute(SHARES, (RELAY_SHARD_LOCK_NAMESPACE,)).fetchall()
            if sum(int(n) for (n,) in shares) >= 256:
                return proc
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the relay did not take its shards within 60 s")


def start_debezium(client: ConnectClient, name: str, settings: Settings,
                   overrides: dict[str, str]) -> str:
    """Create the connector and wait for its replication slot; returns the slot name."""
    options = CdcOptions(name=name, password_ref="${env:OUTBOX_STACK_PG_PASSWORD}")
    config = {**render(settings, options), **overrides}
    client.put_config(name, config)
    deadline = time.monotonic() + 90
    with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("select 1 from pg_replication_slots where slot_name = %s and "
                            "active", (config["slot.name"],)).fetchone():
                return config["slot.name"]
            time.sleep(0.2)
    raise RuntimeError(f"connector {name}: no active replication slot within 90 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per burst")
    parser.add_argument("--burst-transactions", type=int, default=10)
    parser.add_argument("--size", type=int, default=1000, help="payload bytes")
    parser.add_argument("--rate", type=float, default=200.0, help="steady events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="steady seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (+1 warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a property of the rendered connector config")
    parser.add_argument("--paths", default=",".join(PATHS), help="subset of relay,debezium")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    paths = [p for p in args.paths.split(",") if p in PATHS]
    common.load_env()
    admin = common.admin_url()
    names = RunNames.new("cdc")
    client = ConnectClient(os.environ["OUTBOX_CONNECT_URL"])
    urls: dict[str, str] = {}
    readers: dict[str, Reader] = {}
    relay: subprocess.Popen[bytes] | None = None
    connector, slot = names.topic("connector"), None
    try:
        for path in paths:
            urls[path] = common.create_database(admin, names.database(path))
            template = names.topic(path) + "-{aggregatetype}"
            settings = Settings(database_url=urls[path], topic_template=template,
                                kafka_bootstrap_servers=common.bootstrap())
            migrate.upgrade(settings)
            readers[path] = Reader(f"^{names.topic(path)}-.*", names.group(path))
            if path == "relay":
                with psycopg.connect(urls[path], autocommit=True) as conn:
                    conn.execute(Queries.for_settings(settings).notify_trigger)
                relay = start_relay(urls[path], template)
            else:
                slot = start_debezium(client, connector, settings, overrides)
        print(f"run {names.run_id}: paths running; bursts of {args.events:,} events in "
              f"{args.burst_transactions} transactions, then {args.rate:g} events/s for "
              f"{args.seconds:g} s, {args.size} B payloads; connector overrides {overrides}; "
              f"load {common.machine_load()} (shared machine: development figures)",
              flush=True)
        figures: dict[str, dict[str, list[float]]] = {
            p: {"rate": [], "p50": [], "p99": []} for p in paths}
        for r in range(args.rounds + 1):
            line = []
            for path in common.rotated(paths, r):
                ids, first = burst(urls[path], args.events, args.burst_transactions, args.size)
                rate = args.events / (readers[path].wait_for(set(ids), 600) - first)
                p50, p99 = steady(urls[path], readers[path], args)
                if r:
                    for key, value in (("rate", rate), ("p50", p50), ("p99", p99)):
                        figures[path][key].append(value)
                line.append(f"{path} {rate:,.0f}/s p50 {p50:.1f} p99 {p99:.1f} ms")
            print(f"{'warm-up' if r == 0 else f'round {r}':>8}: " + "; ".join(line)
                  + f"  (load {common.machine_load()})", flush=True)
    finally:
        for reader in readers.values():
            reader.stop.set()
        if relay is not None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(60)
        if slot is not None:
            client.delete(connector)
            time.sleep(3)
            with psycopg.connect(urls["debezium"], autocommit=True) as conn:
                conn.execute("select pg_drop_replication_slot(slot_name) from "
                             "pg_replication_slots where slot_name = %s and not active",
                             (slot,))
        for url in urls.values():
            common.drop_database(admin, url)
        mine = [t for t in AdminClient({"bootstrap.servers": common.bootstrap()})
                .list_topics(timeout=10).topics if t.startswith(names.topic())]
        common.delete_topics(common.bootstrap(), mine)
    for path in paths:
        print(f"{path:<9} burst events/s {Spread.of(figures[path]['rate']).show()}")
        print(f"{'':<9} p50 ms {Spread.of(figures[path]['p50']).show('.1f')}")
        print(f"{'':<9} p99 ms {Spread.of(figures[path]['p99']).show('.1f')}")
    if len(paths) == 2:
        ratio = Spread.of(a / b for a, b in zip(figures["relay"]["rate"],
                                               figures["debezium"]["rate"], strict=True))
        print(f"relay / Debezium burst throughput {ratio.show('.2f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
