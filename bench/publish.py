"""Cost of adding one outbox event to a small business transaction.

    .venv/bin/python bench/publish.py                # 20 rounds x 250 transactions each way
    .venv/bin/python bench/publish.py --rounds 4     # a quick look

Baseline: a SQLAlchemy ``Session`` transaction that inserts one order row and commits.
With outbox: the same transaction plus ``publish()`` of one ``OrderCreated`` event
(~300-byte payload). Both run in the same process against the same database, in
alternating rounds so that drift of this shared machine hits both alike. Reported: the
median per-transaction time of each and the ratio (target <= 1.15). A third variant, the
business insert plus one *plain* insert into a bare audit table, shows the floor that any
second statement costs (one more round trip), so the outbox's own share can be read off.

``--durable`` runs it all against a private PostgreSQL cluster with production durability
(``fsync``, ``synchronous_commit`` and ``full_page_writes`` on), started by
``devstack/stack.py`` under ``.stack/durable`` on its own port and stopped afterwards: the
dev cluster runs with them off, which makes commits artificially cheap and every extra
statement look expensive.

Two more variants split the event's cost, so the part the outbox contract itself costs can be
read off in the same run: **row**, the business insert plus a bare INSERT of the same
event's row into the outbox table (values computed before the clock starts: no lock, no
validation, no JSON encoding), and **statement**, publish()'s own statement (the advisory
lock and the insert) with its parameters computed before the clock starts. So
row - base is the floor of any outbox row with the columns of docs/DESIGN.md, statement -
row the ordering lock, and outbox - statement publish()'s Python.

**sql** is the business insert plus the SQL publish function (``select outbox_publish(...)``,
migration 0004) with the same event, its payload JSON-encoded in Python as a client in any
language would: the cost of publishing from another language, against publish() in the
same run (target: within 10%). Per-round medians of both and of their ratio are printed.

``--pipeline`` measures the same variants on a plain psycopg 3 connection in
pipeline mode (``with conn.pipeline():``): the business insert, the event and the commit
leave in one flush, so the event costs its server-side work but no extra round trip.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Spread, load_env, machine_load  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.publish import Event, _prepare, publish  # noqa: E402
from outbox.settings import Settings  # noqa: E402


def fresh_database(admin_url: str) -> str:
    name = f"bench_publish_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


INSERT_ORDER = text("insert into orders (id, customer_id, amount, status) "
                    "values (:id, :customer, :amount, 'PENDING')")


INSERT_AUDIT = text("insert into audit (order_id, note) values (:id, 'created')")

# What a writer in another language sends (migration 0004's function).
CALL_FUNCTION = "select outbox_publish(%s, %s, %s, %s::jsonb, %s, %s, %s)"
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def function_args(ev: Event) -> tuple[object, ...]:
    """The function's arguments for ``ev``, the payload encoded as a client would."""
    return (ev.aggregate_type, ev.aggregate_id, ev.event_type, _JSON.encode(ev.payload),
            ev.correlation_id, ev.causation_id, ev.traceparent)


# The bare outbox row: the same columns publish() writes, without the advisory lock.
INSERT_ROW = ("insert into outbox (id, aggregatetype, aggregateid, type, payload, created_at, "
              "correlation_id, causation_id, traceparent) values (%(id)s, %(aggregatetype)s, "
              "%(aggregateid)s, %(type)s, %(payload)s::jsonb, %(created)s, %(correlation_id)s, "
              "%(causation_id)s, %(traceparent)s)")


def order_event(order_id: str, i: int) -> Event:
    """The ~300-byte ``OrderCreated`` every variant publishes."""
    return Event("order", order_id, "OrderCreated", {
        "eventType": "OrderCreated", "orderId": order_id, "correlationId": order_id,
        "customerId": f"c-{i % 97}",
        "items": [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-7", "quantity": 1}],
        "amount": "42.50", "currency": "EUR", "occurredAt": "2026-11-25T10:00:00.000+00:00"})


def precomputed(n: int) -> list[tuple[str, str, dict[str, object]]]:
    """For the row and statement variants: (order id, statement, parameters) per transaction."""
    out = []
    for i in range(n):
        order_id = str(uuid.uuid4())
        query, params = _prepare([order_event(order_id, i)], None)
        out.append((order_id, query, params))
    return out


def one_round(engine: Engine, n: int, variant: str) -> list[float]:
    timings = []
    for i, (order_id, query, params) in enumerate(precomputed(n)):
        started = time.perf_counter()
        with Session(engine) as session, session.begin():
            session.execute(INSERT_ORDER, {"id": order_id, "customer": f"c-{i % 97}",
                                           "amount": 42.5})
            if variant == "audit":
                session.execute(INSERT_AUDIT, {"id": order_id})
            elif variant == "outbox":
                publish(session, order_event(order_id, i))
            elif variant == "statement":
                session.connection().exec_driver_sql(query, params)
            elif variant == "row":
                session.connection().exec_driver_sql(INSERT_ROW, params)
            elif variant == "sql":
                session.connection().exec_driver_sql(
                    CALL_FUNCTION, function_args(order_event(order_id, i)))
        timings.append(time.perf_counter() - started)
    return timings


def one_round_pipeline(conn: psycopg.Connection[object], n: int, variant: str) -> list[float]:
    """Like :func:`one_round`, on a psycopg connection in pipeline mode (one flush)."""
    timings = []
    for i, (order_id, query, params) in enumerate(precomputed(n)):
        started = time.perf_counter()
        with conn.pipeline():
            conn.execute("insert into orders (id, customer_id, amount, status) "
                         "values (%s, %s, 42.5, 'NEW')", (order_id, f"c-{i % 97}"))
            if variant == "audit":
                conn.execute("insert into audit (order_id, note) values (%s, 'created')",
                             (order_id,))
            elif variant == "outbox":
                publish(conn, order_event(order_id, i))
            elif variant == "statement":
                conn.execute(query, params)
            elif variant == "row":
                conn.execute(INSERT_ROW, params)
            elif variant == "sql":
                conn.execute(CALL_FUNCTION, function_args(order_event(order_id, i)))
            conn.commit()
        timings.append(time.perf_counter() - started)
    return timings


DURABLE_PORT = "55440"


def durability_settings(url: str) -> str:
    """The server settings that decide what a commit costs, as ``name=value, ...``."""
    with psycopg.connect(url) as pg:
        rows = pg.execute("select name, setting from pg_settings where name in "
                          "('fsync', 'synchronous_commit', 'full_page_writes') "
                          "order by name").fetchall()
    return ", ".join(f"{name}={value}" for name, value in rows)


def durable_cluster(action: str) -> str:
    """Start (``up``) or stop (``down``) the private durable cluster; returns its admin URL."""
    stack_dir = ROOT / ".stack" / "durable"
    env = {**os.environ, "OUTBOX_STACK_DIR": str(stack_dir),
           "OUTBOX_STACK_PG_PORT": DURABLE_PORT, "OUTBOX_STACK_PG_FSYNC": "on"}
    subprocess.run([sys.executable, str(ROOT / "devstack" / "stack.py"), action, "postgres"],
                   env=env, check=True)
    for line in (stack_dir / "env").read_text().splitlines():
        if line.startswith("OUTBOX_DATABASE_URL="):
            return line.split("=", 1)[1]
    raise RuntimeError(f"no OUTBOX_DATABASE_URL in {stack_dir / 'env'}")


def print_rounds(per_round: dict[str, list[float]]) -> None:
    """Each variant's per-round medians and its per-round ratio to base, with the spread."""
    print(f"per round (load {machine_load()}; a shared machine: development figures):")
    for variant, medians in per_round.items():
        print(f"  {variant:<9} ms {Spread.of(m * 1000 for m in medians).show('.3f')}")
        if variant != "base":
            ratios = (m / b for m, b in zip(medians, per_round["base"], strict=True))
            print(f"  {'':<9} / base {Spread.of(ratios).show('.3f')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=250)
    parser.add_argument("--durable", action="store_true",
                        help="a private cluster with fsync, synchronous_commit and "
                             "full_page_writes on (production settings)")
    parser.add_argument("--pipeline", action="store_true",
                        help="psycopg 3 connection in pipeline mode instead of a Session")
    parser.add_argument("--schema-revision", default="head",
                        help="migrate the outbox to this revision (0001: before the index "
                             "changes of 0002)")
    args = parser.parse_args()
    load_env()
    admin = durable_cluster("up") if args.durable else os.environ["OUTBOX_DATABASE_URL"]
    url = fresh_database(admin)
    try:
        settings = Settings(database_url=url)
        migrate.upgrade(settings, args.schema_revision)
        engine = create_engine(settings.sqlalchemy_url(), pool_size=1)
        with engine.begin() as conn:
            conn.execute(text("create table orders (id uuid primary key, customer_id text, "
                              "amount numeric(12,2), status text, "
                              "created_at timestamp default now())"))
            conn.execute(text("create table audit (order_id uuid, note text)"))
        variants = ["base", "outbox", "audit", "row", "statement", "sql"]
        timings: dict[str, list[float]] = {v: [] for v in variants}
        per_round: dict[str, list[float]] = {v: [] for v in variants}
        pg: psycopg.Connection[object] | None = (
            psycopg.connect(settings.libpq_url()) if args.pipeline else None)

        def run(n: int, variant: str) -> list[float]:
            if pg is not None:
                return one_round_pipeline(pg, n, variant)
            return one_round(engine, n, variant)

        for variant in variants:  # warm-up: connections, prepared plans, caches
            run(200, variant)
        for r in range(args.rounds):
            # Rotate which goes first so none always gets the warmer cache.
            k = r % len(variants)
            for variant in variants[k:] + variants[:k]:
                measured = run(args.per_round, variant)
                timings[variant].extend(measured)
                per_round[variant].append(statistics.median(measured))
        if pg is not None:
            pg.close()
        engine.dispose()
        durability = durability_settings(url)
    finally:
        drop_database(admin, url)
        if args.durable:
            durable_cluster("down")
    b, o, a, row, stmt, fn = (statistics.median(timings[v]) for v in variants)
    print(f"mode: {'psycopg pipeline' if args.pipeline else 'SQLAlchemy Session'}, "
          f"outbox schema revision {args.schema_revision}; {durability}")
    print(f"transactions per variant: {len(timings['base'])}")
    print(f"business transaction alone:             median {b * 1000:.3f} ms")
    print(f"business transaction + publish():       median {o * 1000:.3f} ms")
    print(f"business transaction + a plain insert:  median {a * 1000:.3f} ms")
    print(f"ratio with/without outbox: {o / b:.3f}  (target <= 1.15)")
    print(f"ratio of a plain second insert (the floor of any extra statement): {a / b:.3f}")
    print(f"business transaction + the bare outbox row:      median {row * 1000:.3f} ms, "
          f"ratio {row / b:.3f}  (no lock, no Python: the contract's floor)")
    print(f"business transaction + publish()'s statement:    median {stmt * 1000:.3f} ms, "
          f"ratio {stmt / b:.3f}  (lock + row, parameters computed beforehand)")
    print(f"business transaction + outbox_publish() in SQL: median {fn * 1000:.3f} ms, "
          f"ratio {fn / b:.3f}")
    ratios = [f / p for f, p in zip(per_round["sql"], per_round["outbox"], strict=True)]
    print("per round, median ms (publish() / SQL function / ratio): " + "  ".join(
        f"{p * 1000:.3f}/{f * 1000:.3f}/{f / p:.2f}"
        for p, f in zip(per_round["outbox"], per_round["sql"], strict=True)))
    print(f"SQL function / publish(): {fn / o:.3f} over all transactions, per-round ratios "
          f"{min(ratios):.2f}-{max(ratios):.2f} (median {statistics.median(ratios):.2f}); "
          "target <= 1.10")
    print(f"event cost (variant - base): publish() {(o - b) * 1000:.3f} ms, SQL function "
          f"{(fn - b) * 1000:.3f} ms")
    print_rounds(per_round)
    return 0


if __name__ == "__main__":
    sys.exit(main())
