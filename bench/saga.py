"""Saga benchmark: orders per second through all four services at a fixed offered load.

    .venv/bin/python bench/saga.py                       # 20 orders/s for 30 s
    .venv/bin/python bench/saga.py --rate 50 --seconds 20

Starts the relay and the four services (each its own process, as in ``make demo``) on the
run's own database and topics, sends ``--warmup`` orders and waits until they are settled
(not counted), then offers orders at a steady rate through the HTTP API. Each order's
clock starts when its request was due on the schedule (so time queued in the client
counts) and stops at the order's final update (same host clock). Reported: every order's
fate (failed requests, COMPLETED, CANCELLED, still PENDING or missing after
``--settle-timeout``: unfinished orders are counted, and count as never done in the
percentiles), completed orders per second, due -> final p50/p99 over the whole run and
per window of the schedule, then each hop and where in the run the slowest orders began.

The consumer group names are the saga's pinned ones (``inventory-service-group`` ...):
two saga runs at once on one broker share those groups (on different topics), so their
rebalances can stall each other.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import RunNames, Spread, percentile  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from services.demo import fresh_topics  # noqa: E402
from services.launcher import SagaProcesses  # noqa: E402
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


@dataclass(eq=False)  # identity: requests go in sets
class Request:
    """One order offered: when it was due, sent and answered (epoch seconds), and how."""

    customer: str
    due: float
    sent: float = 0.0
    answered: float = 0.0
    status: int | None = None
    error: str | None = None


def post(client: httpx.Client, request: Request) -> None:
    request.sent = time.time()
    try:
        response = client.post("/orders", json={
            "customerId": request.customer, "items": [{"sku": "SKU-BOOK", "quantity": 1}],
            "amount": "10.00", "currency": "EUR"})
        request.status = response.status_code
    except httpx.HTTPError as exc:
        request.error = f"{type(exc).__name__}: {exc}"
    request.answered = time.time()


def offer(client: httpx.Client, pool: ThreadPoolExecutor, rate: float, count: int,
          prefix: str) -> list[Request]:
    """POST ``count`` orders on a steady schedule (order n due at start + n / rate).

    Each order's clock starts when it was due, not when a client thread got to send it, so
    time queued in the client counts (no coordinated omission).
    """
    started = time.time()
    requests = [Request(f"{prefix}-{n}", started + n / rate) for n in range(count)]
    futures = []
    for request in requests:
        delay = request.due - time.time()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(post, client, request))
    for future in futures:
        future.result()
    return requests


def wait_settled(url: str, timeout: float) -> bool:
    """Until no order is PENDING; False if some still are after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute("select count(*) from orders.orders where status = "
                               "'PENDING'").fetchone()
        if row and row[0] == 0:
            return True
        time.sleep(0.2)
    return False


def outcomes(conn: psycopg.Connection[tuple[Any, ...]], prefix: str
             ) -> dict[str, tuple[str, float, float]]:
    """customer id -> (status, epoch of the order's last update, of its creation)."""
    rows = conn.execute("select customer_id, status, extract(epoch from updated_at), "
                        "extract(epoch from created_at) from orders.orders "
                        "where customer_id like %s", (prefix + "-%",)).fetchall()
    return {r[0]: (str(r[1]), float(r[2]), float(r[3])) for r in rows}


def report(requests: list[Request], final: dict[str, tuple[str, float, float]],
           windows: int) -> None:
    """Latency from each order's due time; unfinished and failed orders counted, not hidden."""
    failed = [r for r in requests if r.error or not (r.status and 200 <= r.status < 300)]
    status_of = {r.customer: final.get(r.customer, ("MISSING", 0.0, 0.0))[0]
                 for r in requests}
    counts: dict[str, int] = {}
    for status in status_of.values():
        counts[status] = counts.get(status, 0) + 1
    done = [r for r in requests if status_of[r.customer] in ("COMPLETED", "CANCELLED")]
    unfinished = len(requests) - len(done)
    print(f"orders: {len(requests)} requested, {len(failed)} requests failed, "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; unfinished (not COMPLETED or CANCELLED): {unfinished}")

    def line(label: str, subset: list[Request]) -> float:
        # Unfinished orders count as never done: a percentile they reach is not a number.
        lat = sorted([final[r.customer][1] - r.due if r in done_set else math.inf
                      for r in subset])
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        finite = [x for x in lat if x != math.inf]
        span = (max(final[r.customer][1] for r in subset if r in done_set)
                - min(r.due for r in subset)) if finite else math.nan
        print(f"  {label:<10} {len(finite)}/{len(subset)} done, "
              f"{len(finite) / span if finite else 0:5.1f}/s; due -> final p50 "
              f"{p50 * 1000:6.0f} ms, p99 {p99 * 1000:6.0f} ms, max {lat[-1] * 1000:6.0f} ms")
        return p99

    done_set = set(done)
    q = sorted(r.sent - r.due for r in requests)
    a = sorted(r.answered - r.due for r in requests)
    print(f"client: due -> sent p99 {percentile(q, 99) * 1000:.0f} ms, due -> answered p99 "
          f"{percentile(a, 99) * 1000:.0f} ms (time queued in the client)")
    line("all", requests)
    rows = sorted(final[r.customer][1] - final[r.customer][2] for r in done)
    print(f"  (the earlier measure, row created_at -> final, which hides the client and the "
          f"request: p50 {percentile(rows, 50) * 1000:.0f} ms, p99 "
          f"{percentile(rows, 99) * 1000:.0f} ms)")
    size = -(-len(requests) // max(1, windows))
    p99s = [line(f"window {n + 1}", requests[i:i + size])
            for n, i in enumerate(range(0, len(requests), size))]
    print(f"  p99 over windows: {Spread.of(x * 1000 for x in p99s).show('.0f')} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="orders offered per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=20,
                        help="orders sent and settled before the measured ones (not counted)")
    parser.add_argument("--windows", type=int, default=3,
                        help="figures per window of the schedule (the run's rounds)")
    parser.add_argument("--settle-timeout", type=float, default=120.0,
                        help="seconds to wait for the last orders; those still pending "
                             "then are reported as unfinished")
    args = parser.parse_args()
    common.load_env()
    admin = common.admin_url()
    names = RunNames.new("saga")
    url = common.create_database(admin, names.database())
    template = names.topic() + "-{aggregatetype}-events"
    settings = Settings(database_url=url, topic_template=template)
    topics = fresh_topics(settings)
    prepare_database(settings)
    procs = SagaProcesses(env={"OUTBOX_DATABASE_URL": url, "OUTBOX_TOPIC_TEMPLATE": template},
                          log_dir=ROOT / ".stack" / "logs" / f"bench-saga-{names.run_id}")
    procs.start_all()
    total = int(args.rate * args.seconds)
    print(f"run {names.run_id}: offered {args.rate:g} orders/s for {args.seconds:g} s "
          f"({total} orders); load {common.machine_load()} (shared machine: development "
          "figures)")
    try:
        with httpx.Client(base_url=procs.api, timeout=10) as client, \
                ThreadPoolExecutor(8) as pool:
            # Warm-up, not measured: consumers join their groups, producers learn the new
            # topics, connection pools fill. Without it the first orders of a run wait
            # 0.2-0.7 s for that, which is start-up, not the saga's steady latency.
            offer(client, pool, args.rate, args.warmup, "warmup")
            wait_settled(url, args.settle_timeout)
            requests = offer(client, pool, args.rate, total, "c")
        if not wait_settled(url, args.settle_timeout):
            print(f"orders still pending after {args.settle_timeout:g} s: reported as "
                  "unfinished")
    finally:
        procs.stop_all()
    try:
        with psycopg.connect(url) as conn:
            final = outcomes(conn, "c")
            hops = hop_latencies(conn)
    finally:
        common.drop_database(admin, url)
        common.delete_topics(common.bootstrap(), topics)
    report(requests, final, args.windows)
    print("per hop of completed orders (each ends when the next service's event happened, "
          "its occurredAt):")
    if hops:
        print_hops(hops)
    return 0


if __name__ == "__main__":
    sys.exit(main())
