"""``make demo``: the seed's order saga, rebuilt on the toolkit, on the local stack.

It creates a fresh ``saga_demo`` database and fresh saga topics, starts one relay and the
four services (each in its own process), places a few hundred orders through the HTTP API
— some designed to run out of stock, some to be declined — kills the payment service with
``kill -9`` halfway and starts it again, follows the orders live, prints a summary and
stops what it started.

    python -m services.demo [--orders 300]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

from outbox.logs import with_client_logger
from outbox.settings import Settings
from services.launcher import SagaProcesses, load_stack_env
from services.runtime import prepare_database, topic

ROOT = Path(__file__).resolve().parents[1]
DEMO_DB = "saga_demo"
AGGREGATES = ("order", "inventory", "payment", "shipping")


def fresh_database(admin_url: str, name: str = DEMO_DB) -> str:
    """Drop and create database ``name``; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


def fresh_topics(settings: Settings) -> list[str]:
    """Delete and re-create the saga's topics, so a second demo starts from nothing."""
    admin = AdminClient(with_client_logger(
        {"bootstrap.servers": settings.kafka_bootstrap_servers}))
    names = [topic(settings, a) for a in AGGREGATES]
    names += [n + ".dlq" for n in names]
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed).values():
            future.result(30)
        deadline = time.monotonic() + 30
        while set(doomed) & set(admin.list_topics(timeout=10).topics):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics not deleted: {doomed}")
            time.sleep(0.3)
    for attempt in range(20):
        futures = admin.create_topics([NewTopic(n, num_partitions=3, replication_factor=1)
                                       for n in names[:4]])
        try:
            for future in futures.values():
                future.result(30)
            break
        except Exception:
            if attempt == 19:
                raise
            time.sleep(0.5)
    return names


def order_request(n: int, rnd: random.Random) -> dict[str, object]:
    """Mostly ordinary orders; ~8 % ask for a scarce SKU, ~5 % come from declined cards."""
    roll = rnd.random()
    customer = f"decline-{n}" if roll < 0.05 else f"customer-{n % 57}"
    if 0.05 <= roll < 0.13:
        items = [{"sku": "SKU-RARE", "quantity": 2}]
    else:
        items = [{"sku": rnd.choice(["SKU-BOOK", "SKU-MUG", "SKU-PEN"]),
                  "quantity": rnd.randint(1, 3)}]
    return {"customerId": customer, "items": items,
            "amount": f"{rnd.randint(5, 200)}.{rnd.randint(0, 99):02d}", "currency": "EUR"}


def status_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select status, count(*) from orders.orders group by status")
        return {str(status): int(count) for status, count in rows}


def topic_sizes(settings: Settings, names: list[str]) -> dict[str, int]:
    consumer = KafkaConsumer(with_client_logger({
        "bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "saga-demo-counter"}))
    sizes: dict[str, int] = {}
    try:
        for name in names:
            md = consumer.list_topics(name, timeout=10).topics.get(name)
            if md is None or md.error is not None:
                sizes[name] = 0
                continue
            sizes[name] = sum(
                consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                for p in md.partitions)
    finally:
        consumer.close()
    return sizes


def show_progress(counts: dict[str, int], total: int, elapsed: float) -> None:
    done = counts.get("COMPLETED", 0) + counts.get("CANCELLED", 0)
    width = 30
    bar = "#" * (width * done // max(total, 1))
    line = (f"\r[{bar:<{width}}] {done}/{total} final  "
            f"completed {counts.get('COMPLETED', 0):>4}  cancelled {counts.get('CANCELLED', 0):>4}"
            f"  pending {counts.get('PENDING', 0):>4}  {elapsed:5.1f}s")
    print(line, end="" if sys.stdout.isatty() else "\n", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="the order saga demo")
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=180)
    args = parser.parse_args()
    if not load_stack_env() and "OUTBOX_DATABASE_URL" not in os.environ:
        sys.exit("no .stack/env: start the local stack first (make stack-up)")
    admin_url = os.environ["OUTBOX_DATABASE_URL"]
    url = fresh_database(admin_url)
    settings = Settings(database_url=url)
    print(f"database {DEMO_DB}: each service gets its own schema, outbox and inbox")
    names = fresh_topics(settings)
    prepare_database(settings)
    procs = SagaProcesses(env={"OUTBOX_DATABASE_URL": url}, instance_tag="demo",
                          log_dir=ROOT / ".stack" / "logs" / "demo",
                          payment_args=["--decline-rate", "0.03", "--latency", "0.002"])
    print("starting: relay, order-api, inventory, payment, shipping "
          f"(logs in {procs.log_dir.relative_to(ROOT)})")
    procs.start_all()
    rnd = random.Random(7)  # noqa: S311 - a reproducible demo, not cryptography
    started = time.monotonic()
    try:
        with httpx.Client(base_url=procs.api, timeout=10) as client, \
                ThreadPoolExecutor(8) as pool:

            def place(n: int) -> None:
                response = client.post("/orders", json=order_request(n, rnd),
                                       headers={"Idempotency-Key": f"demo-{n}"})
                response.raise_for_status()

            half = args.orders // 2
            list(pool.map(place, range(half)))
            print(f"placed {half} orders; kill -9 of the payment service, then a restart")
            procs.kill("payment")
            list(pool.map(place, range(half, args.orders)))
            time.sleep(1.0)
            procs.start("payment")
            print(f"placed {args.orders} orders")
        deadline = time.monotonic() + args.timeout
        while True:
            counts = status_counts(url)
            show_progress(counts, args.orders, time.monotonic() - started)
            if counts.get("PENDING", 0) == 0 and sum(counts.values()) >= args.orders:
                break
            if time.monotonic() > deadline:
                print(f"\nnot every order reached a final state in {args.timeout:.0f}s")
                break
            time.sleep(0.5)
        print()
        duplicates = procs.consumer_metric("outbox_consumer_duplicates_skipped_total")
    finally:
        codes = procs.stop_all()
    with psycopg.connect(url) as conn:
        latencies = [float(r[0]) for r in conn.execute(
            "select extract(epoch from updated_at - created_at) from orders.orders "
            "where status in ('COMPLETED', 'CANCELLED')")]
        reasons = conn.execute(
            "select coalesce(split_part(reason, ':', 1), ''), count(*) from orders.orders "
            "where status = 'CANCELLED' group by 1 order by 2 desc").fetchall()
    sizes = topic_sizes(settings, names)
    counts = status_counts(url)
    print("\n=== order saga on the outbox toolkit ===")
    print(f"orders placed          {args.orders}")
    print(f"completed              {counts.get('COMPLETED', 0)}")
    print(f"cancelled              {counts.get('CANCELLED', 0)}")
    for reason, n in reasons:
        print(f"  {n:>4}  {reason}")
    print(f"still pending          {counts.get('PENDING', 0)}")
    print("events per topic")
    for name in names:
        print(f"  {name:<22} {sizes.get(name, 0)}")
    print(f"duplicates skipped     {int(duplicates)} (redelivered events the inboxes "
          "recognised)")
    print(f"dead letters           {sum(v for k, v in sizes.items() if k.endswith('.dlq'))}")
    if latencies:
        q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        print(f"order to final state   p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {q[98] * 1000:.0f} ms")
    print(f"processes stopped      {', '.join(f'{k}={v}' for k, v in codes.items())}")
    return 0 if counts.get("PENDING", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
