"""Saga benchmark: orders per second through all four services at a fixed offered load.

    .venv/bin/python bench/saga.py                       # 20 orders/s for 30 s
    .venv/bin/python bench/saga.py --rate 50 --seconds 20

Starts the relay and the four services (each its own process, as in ``make demo``) on a
fresh database and private topics, sends ``--warmup`` orders and waits until they are
settled (not counted), then offers orders at a steady rate through the HTTP API, and
reports: completed orders per second (from the first order to the last final state)
against the offered rate, and order-to-final-state latency p50/p99 (the order row's
``created_at`` → ``updated_at``, both written by PostgreSQL's clock), then the same per
hop and where in the run the slowest orders began.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from outbox.settings import Settings  # noqa: E402
from services.demo import fresh_database, fresh_topics  # noqa: E402
from services.launcher import SagaProcesses, load_stack_env  # noqa: E402
from services.runtime import prepare_database  # noqa: E402

# Each hop ends when the next service's event happened (its producer's occurredAt, in
# orders.order_history); the last one when the order service settled the order.
HOPS_SQL = """
with steps as (
    select o.id, o.created_at as t0,
           max(h.occurred_at) filter (where h.source = 'inventory') as t1,
           max(h.occurred_at) filter (where h.source = 'payment') as t2,
           max(h.occurred_at) filter (where h.source = 'shipping') as t3,
           o.updated_at as t4,
           min(o.created_at) over () as first
      from orders.orders o
      join orders.order_history h on h.order_id = o.id
     where o.status = 'COMPLETED' and o.customer_id not like 'warmup-%'
     group by o.id, o.created_at, o.updated_at
)
select extract(epoch from t1 - t0), extract(epoch from t2 - t1),
       extract(epoch from t3 - t2), extract(epoch from t4 - t3),
       extract(epoch from t0 - first)
  from steps
"""
HOP_NAMES = ("order -> inventory", "inventory -> payment", "payment -> shipping",
             "shipping -> order settled")


def hop_latencies(conn: psycopg.Connection[tuple[Any, ...]]) -> list[tuple[float, ...]]:
    """Per completed order: the four hops' durations and when (s after the first) it began."""
    return [tuple(float(v) for v in row) for row in conn.execute(HOPS_SQL).fetchall()]


def print_hops(hops: list[tuple[float, ...]]) -> None:
    """p50/p99/max per hop, and where in the run the slowest 1 % of orders began."""
    for i, name in enumerate(HOP_NAMES):
        values = sorted(h[i] for h in hops)
        q = statistics.quantiles(values, n=100)
        print(f"  {name:<26} p50 {statistics.median(values) * 1000:6.0f} ms  "
              f"p99 {q[98] * 1000:6.0f} ms  max {values[-1] * 1000:6.0f} ms")
    slowest = sorted(hops, key=lambda h: sum(h[:4]), reverse=True)[:max(1, len(hops) // 100)]
    print("  slowest 1 % began at (s into the run): "
          + ", ".join(f"{h[4]:.1f}" for h in sorted(slowest, key=lambda h: h[4])))


def offer(client: httpx.Client, pool: ThreadPoolExecutor, rate: float, count: int,
          prefix: str) -> None:
    """POST ``count`` orders on a steady schedule (order n at start + n / rate)."""
    started = time.monotonic()
    futures = []
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(client.post, "/orders", json={
            "customerId": f"{prefix}-{n}", "items": [{"sku": "SKU-BOOK", "quantity": 1}],
            "amount": "10.00", "currency": "EUR"}))
    for future in futures:
        future.result().raise_for_status()


def wait_settled(url: str, timeout: float = 120.0) -> None:
    """Until no order is PENDING (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute("select count(*) from orders.orders where status = "
                               "'PENDING'").fetchone()
        if row and row[0] == 0:
            return
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="orders offered per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=20,
                        help="orders sent and settled before the measured ones (not counted)")
    args = parser.parse_args()
    load_stack_env()
    admin = os.environ["OUTBOX_DATABASE_URL"]
    name = "bench_saga"
    url = fresh_database(admin, name)
    template = f"bench-{uuid.uuid4().hex[:6]}-{{aggregatetype}}-events"
    settings = Settings(database_url=url, topic_template=template)
    fresh_topics(settings)
    prepare_database(settings)
    procs = SagaProcesses(env={"OUTBOX_DATABASE_URL": url, "OUTBOX_TOPIC_TEMPLATE": template},
                          log_dir=ROOT / ".stack" / "logs" / "bench-saga")
    procs.start_all()
    total = int(args.rate * args.seconds)
    try:
        with httpx.Client(base_url=procs.api, timeout=10) as client, \
                ThreadPoolExecutor(8) as pool:
            # Warm-up, not measured: consumers join their groups, producers learn the new
            # topics, connection pools fill. Without it the first orders of a run wait
            # 0.2-0.7 s for that, which is start-up, not the saga's steady latency.
            offer(client, pool, args.rate, args.warmup, "warmup")
            wait_settled(url)
            offer(client, pool, args.rate, total, "c")
        wait_settled(url)
    finally:
        procs.stop_all()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select extract(epoch from updated_at - created_at), "
            "extract(epoch from max(updated_at) over () - min(created_at) over ()) "
            "from orders.orders where status = 'COMPLETED' "
            "and customer_id not like 'warmup-%'").fetchall()
        hops = hop_latencies(conn)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
    latencies = sorted(float(r[0]) for r in rows)
    span = float(rows[0][1]) if rows else float("nan")
    q = statistics.quantiles(latencies, n=100)
    print(f"offered: {args.rate:g} orders/s for {args.seconds:g} s ({total} orders)")
    print(f"completed: {len(latencies)} orders in {span:.1f} s = "
          f"{len(latencies) / span:.1f} orders/s through all four services")
    print(f"order -> COMPLETED latency: p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {q[98] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    print("per hop (each ends when the next service's event happened, its occurredAt):")
    print_hops(hops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
