"""What a large delivered backlog left in the outbox costs the relay (issue 16's target: ≤ 5 %).

    .venv/bin/python bench/backlog.py                          # 10,000,000 delivered rows
    .venv/bin/python bench/backlog.py --delivered 100000 --events 2000 --rounds 1  # quick look
    .venv/bin/python bench/backlog.py --explain                # and the window read's plan

Two databases of this run, each with its own topic: **with** holds ``--delivered`` rows
already delivered, **without** holds none. The delivered rows are inserted by one
``insert … select generate_series`` (payloads of ``--delivered-size`` bytes, random hex, the
same aggregate spread as the fresh rows) and are delivered the way the relay's cursor
records it: every shard's cursor gets ``done`` = a snapshot taken after they committed
(what the relay writes when it finished a window; relay/window.py), then ``VACUUM
ANALYZE``. The base snapshot is taken once no transaction older than the insert runs in the
cluster, so the delivered rows lie behind every shard's scan start (``scan_bounds``).

Then both databases get the same fresh backlog (``--events`` rows of ``--size`` bytes, as
bench/relay.py writes them), and in every round, in an order that rotates, after a
warm-up round that is not counted, ``outbox relay run`` delivers it as its own process
(bench/relay.py's ``relay`` contender): the cursors are reset to the base snapshot first,
so exactly the fresh rows are pending. Clock: spawn → the broker's append stamp of the
last record. Reported per round and as medians with spread: events/s with and without,
and the ratio with/without per round (1.0: the delivered rows cost nothing).

``--explain``: ``EXPLAIN (ANALYZE, BUFFERS)`` of the relay's first window read
(``first_window_batch``, every shard, base cursors) in both databases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench import common  # noqa: E402
from bench.common import Offsets, RunNames, Spread  # noqa: E402
from bench.relay_contenders import run_relay, write_backlog  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.names import SHARD_COUNT  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from relay.connections import connect  # noqa: E402
from relay.loop import RelayOptions  # noqa: E402
from relay.queries import Queries  # noqa: E402
from relay.window import ShardCursor, read_params  # noqa: E402

KINDS = ("with", "without")

# The delivered rows: one statement, payloads of random hex (md5 blocks) of about %(size)s
# bytes, aggregates spread like the fresh backlog's.
INSERT_DELIVERED = """
insert into outbox (id, aggregatetype, aggregateid, type, payload, correlation_id, created_at)
select gen_random_uuid(), 'bench', 'order-' || (n %% %(aggregates)s), 'OrderUpdated',
       jsonb_build_object('n', n, 'data', (select string_agg(md5(random()::text || n || k), '')
                                           from generate_series(1, %(blocks)s) as k)),
       'order-' || (n %% %(aggregates)s),
       (now() at time zone 'utc') - interval '1 day'
from generate_series(1, %(rows)s) as n
"""


def base_snapshot(conn: psycopg.Connection[Any], after_xid: int | None,
                  timeout: float = 120.0) -> str:
    """A snapshot in which every transaction up to ``after_xid`` has ended (others on the
    shared cluster may run long): the delivered rows then lie below every scan start."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("select pg_current_snapshot()::text, "
                           "pg_snapshot_xmin(pg_current_snapshot())::text::int8").fetchone()
        assert row is not None
        snapshot, xmin = str(row[0]), int(row[1])
        if after_xid is None or xmin > after_xid or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.5)


def prepare(admin: str, names: RunNames, kind: str, args: argparse.Namespace
            ) -> tuple[str, str, dict[str, Any]]:
    """One database: migrated, delivered rows (``with`` only), base snapshot, fresh backlog."""
    url = common.create_database(admin, names.database(kind))
    migrate.upgrade(Settings(database_url=url))
    info: dict[str, Any] = {"delivered": 0}
    old_xid: int | None = None
    with psycopg.connect(url, autocommit=True) as conn:
        if kind == "with" and args.delivered:
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(INSERT_DELIVERED, {"rows": args.delivered,
                                                "aggregates": args.aggregates,
                                                "blocks": max(1, args.delivered_size // 32)})
                xid = conn.execute("select pg_current_xact_id()::text::int8").fetchone()
                assert xid is not None
                old_xid = int(xid[0])
            inserted = time.perf_counter() - started
            conn.execute("vacuum analyze outbox")
            size = conn.execute("select pg_total_relation_size('outbox')").fetchone()
            assert size is not None
            info = {"delivered": args.delivered, "insert_seconds": inserted,
                    "vacuum_seconds": time.perf_counter() - started - inserted,
                    "table_bytes": int(size[0])}
        snapshot = base_snapshot(conn, old_xid)
    written = write_backlog(url, args.events, args.aggregates, args.size)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze outbox")
    info["fresh_written_seconds"] = written
    info["base_snapshot"] = snapshot
    extra = (f"{info['delivered']:,} delivered rows, {info['table_bytes'] / 1e9:.2f} GB, "
             f"insert {info['insert_seconds']:.0f} s + vacuum analyze "
             f"{info['vacuum_seconds']:.0f} s; " if info["delivered"] else "no delivered rows; ")
    print(f"  {kind}: {extra}fresh backlog {args.events:,} x {args.size} B written in "
          f"{written:.1f} s; base snapshot {snapshot[:60]}", flush=True)
    return url, snapshot, info


def explain(url: str, snapshot: str, batch: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the first window read over every shard, in a session
    set up as the relay's reading sessions are (index scans, work_mem)."""
    queries = Queries.for_settings(Settings(database_url=url))
    shards = list(range(SHARD_COUNT))
    cursors = {s: ShardCursor(done=snapshot) for s in shards}
    params = {**read_params(shards, cursors, None), "limit": batch}
    with connect(Settings(database_url=url), "bench-explain", reads_outbox=True) as conn:
        rows = conn.execute("explain (analyze, buffers) " + queries.first_window_batch,
                            params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--delivered", type=int, default=10_000_000,
                        help="delivered rows left in the 'with' database")
    parser.add_argument("--delivered-size", type=int, default=200,
                        help="payload bytes of each delivered row (random hex)")
    parser.add_argument("--events", type=int, default=100_000, help="fresh backlog rows")
    parser.add_argument("--size", type=int, default=1000, help="fresh payload bytes")
    parser.add_argument("--rounds", type=int, default=4, help="measured rounds (+1 warm-up)")
    parser.add_argument("--aggregates", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=RelayOptions.batch_size)
    parser.add_argument("--pipeline-depth", type=int, default=RelayOptions.pipeline_depth)
    parser.add_argument("--processes", type=int, default=None,
                        help="the relay's --processes (default: its own default)")
    parser.add_argument("--explain", action="store_true",
                        help="print EXPLAIN (ANALYZE, BUFFERS) of the first window read")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep databases and topics")
    args = parser.parse_args(argv)
    common.load_env()
    names = RunNames.new("backlog")
    admin = common.admin_url()
    offsets = Offsets(common.bootstrap())
    urls: dict[str, str] = {}
    topics: dict[str, str] = {}
    print(f"run {names.run_id}: {args.delivered:,} delivered rows against none, fresh "
          f"backlog {args.events:,} x {args.size} B; load {common.machine_load()}", flush=True)
    try:
        snapshots: dict[str, str] = {}
        report: dict[str, Any] = {"run": names.run_id, "args": vars(args), "databases": {}}
        for kind in KINDS:
            urls[kind], snapshots[kind], report["databases"][kind] = prepare(
                admin, names, kind, args)
            topics[kind] = names.topic(kind)
            common.create_topic(common.bootstrap(), topics[kind] + "-bench", args.partitions)
        if args.explain:
            for kind in KINDS:
                plan = explain(urls[kind], snapshots[kind], args.batch_size)
                report["databases"][kind]["explain"] = plan
                print(f"\n-- first window read, {kind}:\n{plan}\n", flush=True)
        rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
        for r in range(args.rounds + 1):
            line = []
            for kind in common.rotated(list(KINDS), r):
                res = run_relay(urls[kind], offsets, topics[kind], {}, args.events, args,
                                cursor_done=snapshots[kind], processes=args.processes)
                if r:
                    rates[kind].append(res["rate"])
                line.append(f"{kind} {res['rate']:,.0f}")
            label = "warm-up" if r == 0 else f"round {r}"
            print(f"{label:>8}: " + ", ".join(line) + f"  (load {common.machine_load()})",
                  flush=True)
        ratio = Spread.of(w / o for w, o in zip(rates["with"], rates["without"], strict=True))
        for kind in KINDS:
            spread = Spread.of(rates[kind])
            report[kind] = spread.as_dict()
            print(f"  relay {kind:<8} events/s {spread.show()}")
        report["ratio"] = ratio.as_dict()
        report["best_over_best"] = max(rates["with"]) / max(rates["without"])
        print(f"  ratio with/without {ratio.show('.3f')}; best/best "
              f"{report['best_over_best']:.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    finally:
        offsets.close()
        if not args.keep:
            common.delete_topics(common.bootstrap(), [t + "-bench" for t in topics.values()])
            for url in urls.values():
                common.drop_database(admin, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
