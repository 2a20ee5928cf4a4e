"""What the NOTIFY trigger costs the writers: none, the statement trigger, the shard trigger.

    .venv/bin/python bench/notify.py                 # 6 rounds (+1 warm-up)
    .venv/bin/python bench/notify.py --rounds 2      # a quick look

``outbox relay install-notify`` installs a row trigger that sends each row's shard
(relay/hints.py); earlier versions installed a statement trigger that sent ``''`` once per
inserting statement. Both are measured against no trigger, on one database of this run,
in rounds whose order rotates, after a warm-up round that is not counted:

- **single**: ``--transactions`` transactions of one ``publish()`` each (1 KB payloads,
  bulk random), committed one by one with the stack's durable commits: a service's write;
- **bulk**: ``--bulk-transactions`` transactions of ``--bulk-rows`` events each, one
  ``publish()`` call per transaction (one multi-row statement): a batch job or a capture
  trigger's burst, where the row trigger runs once per row and the statement trigger once;
- **server**: the same rows inserted by one ``insert … select generate_series`` per
  transaction, payloads made by PostgreSQL: no Python in the clock, so the trigger's own
  cost per row is not hidden behind ``publish()``'s.

Reported per variant: µs per transaction (single) and per row (bulk), per round and as
medians with spread, and each trigger's median ratio to no trigger over the rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import common  # noqa: E402
from bench.common import RunNames, Spread, rotated  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.publish import Event, publish  # noqa: E402
from outbox.settings import load_settings  # noqa: E402
from relay.queries import Queries  # noqa: E402

VARIANTS = ("none", "statement", "shard")


def statement_trigger(queries: Queries) -> str:
    """The trigger of earlier versions: one ``''`` per inserting statement."""
    return (queries.notify_trigger.replace("coalesce(new.shard::text, '')", "''")
            .replace("for each row", "for each statement"))


def install(conn: psycopg.Connection[Any], queries: Queries, variant: str) -> None:
    conn.execute(queries.drop_notify_trigger)
    if variant == "statement":
        conn.execute(statement_trigger(queries))
    elif variant == "shard":
        conn.execute(queries.notify_trigger)


def events(n: int, count: int, size: int) -> list[Event]:
    out = []
    for i in range(count):
        agg = f"order-{(n + i) % 1000}"
        out.append(Event(aggregate_type="bench", aggregate_id=agg, event_type="OrderUpdated",
                         payload=common.payload(n + i, agg, size), correlation_id=agg))
    return out


def single(conn: psycopg.Connection[Any], transactions: int, size: int) -> float:
    """µs per one-event transaction (payloads made before the clock starts)."""
    batches = [events(i, 1, size) for i in range(transactions)]
    started = time.perf_counter()
    for batch in batches:
        publish(conn, *batch)
        conn.commit()
    return (time.perf_counter() - started) / transactions * 1e6


def bulk(conn: psycopg.Connection[Any], transactions: int, rows: int, size: int) -> float:
    """µs per row of multi-row transactions."""
    batches = [events(i * rows, rows, size) for i in range(transactions)]
    started = time.perf_counter()
    for batch in batches:
        publish(conn, *batch)
        conn.commit()
    return (time.perf_counter() - started) / (transactions * rows) * 1e6


SERVER_INSERT = """
insert into {table} (id, aggregatetype, aggregateid, type, payload, correlation_id)
select gen_random_uuid(), 'bench', 'order-' || (n %% 1000), 'OrderUpdated',
       jsonb_build_object('n', n, 'data', repeat(md5(n::text), %(repeat)s)),
       'order-' || (n %% 1000)
from generate_series(1, %(rows)s) as n
"""


def server(conn: psycopg.Connection[Any], table: str, transactions: int, rows: int,
           size: int) -> float:
    """µs per row of multi-row inserts made by PostgreSQL."""
    sql = SERVER_INSERT.format(table=table)
    started = time.perf_counter()
    for _ in range(transactions):
        conn.execute(sql, {"rows": rows, "repeat": max(1, size // 32)})
        conn.commit()
    return (time.perf_counter() - started) / (transactions * rows) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=6, help="measured rounds (+1 warm-up)")
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--bulk-transactions", type=int, default=5)
    parser.add_argument("--bulk-rows", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1000, help="payload bytes")
    args = parser.parse_args(argv)
    common.load_env()
    names = RunNames.new("notify")
    admin = common.admin_url()
    url = common.create_database(admin, names.database("notify"))
    try:
        settings = load_settings(database_url=url, kafka_bootstrap_servers=common.bootstrap())
        migrate.upgrade(settings)
        queries = Queries.for_settings(settings)
        print(f"run {names.run_id}: {args.transactions} one-event transactions and "
              f"{args.bulk_transactions} x {args.bulk_rows}-event transactions per variant "
              f"and round, {args.size} B payloads; load {common.machine_load()} (a shared "
              "machine: development figures)")
        results: dict[str, dict[str, list[float]]] = {
            v: {"single": [], "bulk": [], "server": []} for v in VARIANTS}
        with psycopg.connect(url) as conn:
            conn.autocommit = True
            for r in range(args.rounds + 1):
                line = []
                for variant in rotated(VARIANTS, r):
                    install(conn, queries, variant)
                    conn.autocommit = False
                    one = single(conn, args.transactions, args.size)
                    many = bulk(conn, args.bulk_transactions, args.bulk_rows, args.size)
                    made = server(conn, queries.qualified, args.bulk_transactions,
                                  args.bulk_rows * 5, args.size)
                    conn.autocommit = True
                    conn.execute(f"truncate {queries.qualified}")
                    if r:
                        results[variant]["single"].append(one)
                        results[variant]["bulk"].append(many)
                        results[variant]["server"].append(made)
                    line.append(f"{variant} {one:,.0f} µs/tx, {many:.1f} / {made:.1f} µs/row")
                label = "warm-up" if r == 0 else f"round {r}"
                print(f"{label:>8}: " + "; ".join(line) + f"  (load {common.machine_load()})",
                      flush=True)
        for variant in VARIANTS:
            print(f"  {variant:<10} single µs/tx  {Spread.of(results[variant]['single']).show()}")
            for kind in ("bulk", "server"):
                print(f"  {'':<10} {kind} µs/row  "
                      f"{Spread.of(results[variant][kind]).show('.1f')}")
        for variant in VARIANTS[1:]:
            for kind in ("single", "bulk", "server"):
                ratios = [a / b for a, b in zip(results[variant][kind], results["none"][kind],
                                                strict=True)]
                print(f"  {variant} ÷ none, {kind:<6} {Spread.of(ratios).show('.2f')}")
    finally:
        common.drop_database(admin, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
