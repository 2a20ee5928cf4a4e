"""Cost of trigger capture: a legacy write with a capture trigger against the same write
without it and against the same write plus publish().

    .venv/bin/python bench/capture.py                # 20 rounds x 250 transactions each way
    .venv/bin/python bench/capture.py --rounds 4     # a quick look

Every variant is a SQLAlchemy ``Session`` transaction that inserts one order row (~300
bytes of columns, random values) and commits, in its own fresh database:

- **base**: into ``orders``, which has no trigger;
- **captured**: into ``orders_captured``, the same table with ``outbox capture add``'s
  trigger (insert; payload: all columns), which publishes through the SQL function;
- **publish**: into ``orders`` plus ``publish()`` of an event with the same columns as
  its payload: what a service changed to use the toolkit pays.

Rounds alternate (the first variant rotates) so the shared machine's drift hits all alike.
Reported: medians, per-round medians, and (captured - base) / (publish - base), the
trigger's cost as a share of publish()'s (target <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import load_env  # noqa: E402
from bench.publish import drop_database, fresh_database  # noqa: E402
from outbox import capture, migrate  # noqa: E402
from outbox.publish import Event, publish  # noqa: E402
from outbox.settings import Settings  # noqa: E402

TABLE = ("create table {name} (id uuid primary key, customer_id text not null, "
         "status text not null, amount numeric(12, 2) not null, currency text not null, "
         "items jsonb not null, note text, created_at timestamp not null default now())")


def order(i: int) -> dict[str, object]:
    """One order's columns: random ids and note (incompressible), ~300 bytes as JSON."""
    return {"id": str(uuid.uuid4()), "customer_id": f"c-{uuid.uuid4().hex[:12]}",
            "status": "PENDING", "amount": f"{(i % 9000) / 100 + 10:.2f}", "currency": "EUR",
            "items": f'[{{"sku": "SKU-{i % 50}", "quantity": {i % 4 + 1}}}]',
            "note": os.urandom(48).hex()}


def insert(table: str) -> object:
    return text(f"insert into {table} (id, customer_id, status, amount, currency, items, note) "
                "values (:id, :customer_id, :status, :amount, :currency, "
                "cast(:items as jsonb), :note)")


def one_round(engine: Engine, n: int, variant: str) -> list[float]:
    rows = [order(i) for i in range(n)]
    statement = insert("orders_captured" if variant == "captured" else "orders")
    timings = []
    for row in rows:
        started = time.perf_counter()
        with Session(engine) as session, session.begin():
            session.execute(statement, row)  # type: ignore[call-overload]
            if variant == "publish":  # the payload the trigger writes: the row's columns
                publish(session, Event("order", str(row["id"]), "OrderCreated",
                                       {**row, "items": json.loads(str(row["items"]))}))
        timings.append(time.perf_counter() - started)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=250)
    args = parser.parse_args()
    load_env()
    admin = os.environ["OUTBOX_DATABASE_URL"]
    url = fresh_database(admin)
    variants = ["base", "captured", "publish"]
    timings: dict[str, list[float]] = {v: [] for v in variants}
    per_round: dict[str, list[float]] = {v: [] for v in variants}
    try:
        settings = Settings(database_url=url)
        migrate.upgrade(settings)
        engine = create_engine(settings.sqlalchemy_url(), pool_size=1)
        with engine.begin() as conn:
            for name in ("orders", "orders_captured"):
                conn.execute(text(TABLE.format(name=name)))
        with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
            capture.add(conn, capture.Capture(
                name="bench", table="orders_captured", aggregate_type="order",
                aggregate_id_column="id", event_type="OrderCreated", operations=("insert",)),
                settings)
        for variant in variants:  # warm-up: connections, plans, the trigger's first call
            one_round(engine, 200, variant)
        for r in range(args.rounds):
            k = r % len(variants)
            for variant in variants[k:] + variants[:k]:
                measured = one_round(engine, args.per_round, variant)
                timings[variant].extend(measured)
                per_round[variant].append(statistics.median(measured))
        with engine.connect() as conn:
            events = conn.execute(text("select count(*) from outbox")).scalar_one()
        engine.dispose()
    finally:
        drop_database(admin, url)
    base, captured, published = (statistics.median(timings[v]) for v in variants)
    print(f"transactions per variant: {len(timings['base'])}; events written: {events}")
    print(f"insert alone:                     median {base * 1000:.3f} ms")
    print(f"insert with the capture trigger:  median {captured * 1000:.3f} ms, "
          f"ratio {captured / base:.3f}")
    print(f"insert + publish():               median {published * 1000:.3f} ms, "
          f"ratio {published / base:.3f}")
    print("per round, median ms (base / captured / publish): " + "  ".join(
        f"{b * 1000:.3f}/{c * 1000:.3f}/{p * 1000:.3f}" for b, c, p in zip(
            per_round["base"], per_round["captured"], per_round["publish"], strict=True)))
    shares = [(c - b) / (p - b) for b, c, p in zip(
        per_round["base"], per_round["captured"], per_round["publish"], strict=True) if p > b]
    print(f"trigger cost / publish() cost: {(captured - base) / (published - base):.2f} "
          f"over all transactions; per round {min(shares):.2f}-{max(shares):.2f} (median "
          f"{statistics.median(shares):.2f}); target <= 1.0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
