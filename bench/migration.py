"""The cutover, measured: the same orders and the same faults against four systems.

    # every variant under every fault, on a PRIVATE stack (it restarts Kafka and PostgreSQL)
    OUTBOX_STACK_DIR=$PWD/.stack-private .venv/bin/python bench/migration.py --own-stack
    # no faults, three alternating rounds: throughput and latency side by side
    .venv/bin/python bench/migration.py --faults none --rounds 3 --rate 60 --seconds 20
    .venv/bin/python bench/migration.py --json > migration.json

Variants (services/legacy/variants.py): ``legacy`` (the seed's fetch() chain), ``dualwrite``
(commit, then produce), ``saga`` (the toolkit's outbox saga), ``strangler`` (create-order
publishes via the outbox, ``outbox forward`` calls the legacy process-inventory, which still
fetches the rest). Faults (services/legacy/scenario.py): ``none``; ``kill`` (the inventory
step kill -9-ed between its commit and its call, restarted after 1 s); ``down`` (the
inventory step stopped for --down-for s); ``broker`` (Kafka stopped and started);
``postgres`` (``pg_ctl stop -m immediate``, synchronous_commit=on, then started). Each
fault hits --fault-at s into the load, for every variant. Each run has its own database
and topics.

Per variant and fault: orders offered / accepted (2xx) / completed / cancelled / lost
(accepted, never final) / duplicated effects (stock taken twice, a second charge or
shipment), completed+cancelled per second (first request to last final state), and
request → final state p50/p99.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from services.legacy import scenario, variants  # noqa: E402

COLUMNS = ("accepted", "completed", "cancelled", "lost", "duplicates", "orders_per_s",
           "p50_ms", "p99_ms")


def load_stack() -> ModuleType:
    """devstack/stack.py bound to ``$OUTBOX_STACK_DIR`` and the ports its services run on
    (the module reads them at import), so a restart brings back the same stack."""
    os.environ["OUTBOX_STACK_PG_FSYNC"] = "on"  # a restart keeps synchronous_commit=on
    os.environ.setdefault("OUTBOX_STACK_KAFKA_HEAP", "512m")
    os.environ.setdefault("OUTBOX_STACK_KAFKA_PORT", common.bootstrap().rsplit(":", 1)[1])
    props = common.stack_dir() / "kafka" / "server.properties"
    for line in props.read_text().splitlines() if props.exists() else []:
        if line.startswith("controller.quorum.voters="):
            os.environ.setdefault("OUTBOX_STACK_CONTROLLER_PORT", line.rsplit(":", 1)[1])
    spec = importlib.util.spec_from_file_location("devstack_stack", ROOT / "devstack" /
                                                  "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def stack_faults() -> dict[str, Callable[[], None]]:
    """What restarts the (private) stack's broker and PostgreSQL."""
    stack = load_stack()
    with psycopg.connect(common.admin_url()) as conn:
        row = conn.execute("show synchronous_commit").fetchone()
    if not row or row[0] != "on":
        sys.exit(f"synchronous_commit is {row[0] if row else '?'} on this stack: restart it "
                 "with OUTBOX_STACK_PG_FSYNC=on (devstack/stack.py down postgres; up postgres)")

    def broker() -> None:
        kafka = stack.Kafka()
        kafka.down()
        kafka.up()

    def postgres() -> None:
        pg = stack.Postgres()
        pg.run_as([str(pg.bindir() / "pg_ctl"), "-D", str(pg.data), "-m", "immediate", "-w",
                   "stop"])
        pg.up()

    return {"broker": broker, "postgres": postgres}


def fmt(value: float, column: str) -> str:
    if column in ("orders_per_s",):
        return f"{value:.1f}"
    if column.endswith("_ms"):
        return "-" if math.isnan(value) else f"{value:,.0f}"
    return f"{int(value)}"


def print_table(fault: str, rows: list[dict[str, Any]]) -> None:
    """One fault: a row per variant (medians over rounds), then each round's figures."""
    print(f"\n== fault: {fault}")
    print(f"{'variant':<11}" + "".join(f"{c:>13}" for c in COLUMNS) + f"{'fault_s':>9}")
    for name in variants.VARIANTS:
        runs = [r for r in rows if r["variant"] == name]
        if runs:
            print(f"{name:<11}" + "".join(
                f"{fmt(statistics.median(float(r[c]) for r in runs), c):>13}" for c in COLUMNS)
                + f"{statistics.median(float(r['fault_seconds']) for r in runs):>9.1f}")
    if len({r["round"] for r in rows}) > 1:
        for row in sorted(rows, key=lambda r: (r["variant"], r["round"])):
            print(f"  {row['variant']:<10} round {row['round']}: lost {row['lost']}, "
                  f"{row['orders_per_s']:.1f} orders/s, p50 {fmt(row['p50_ms'], 'p50_ms')} ms, "
                  f"p99 {fmt(row['p99_ms'], 'p99_ms')} ms")


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """saga / legacy throughput and p99 with no fault (medians over rounds)."""
    def median(variant: str, column: str) -> float:
        values = [float(r[column]) for r in rows if r["variant"] == variant
                  and r["fault"] == "none"]
        return statistics.median(values) if values else float("nan")

    return {"saga_over_legacy_orders_per_s": median("saga", "orders_per_s")
            / median("legacy", "orders_per_s"),
            "saga_over_legacy_p99": median("saga", "p99_ms") / median("legacy", "p99_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(variants.VARIANTS))
    parser.add_argument("--faults", default=",".join(scenario.FAULTS))
    parser.add_argument("--rate", type=float, default=40.0, help="orders offered per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the load")
    parser.add_argument("--warmup", type=int, default=20,
                        help="orders placed and settled first (not counted)")
    parser.add_argument("--fault-at", type=float, default=10.0, help="s into the load")
    parser.add_argument("--down-for", type=float, default=10.0)
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="an order not final after this long without progress is lost")
    parser.add_argument("--rounds", type=int, default=1, help="alternating order per round")
    parser.add_argument("--own-stack", action="store_true",
                        help="the stack is this run's alone: the broker and postgres faults "
                             "may restart it")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="also write the JSON result to this file")
    parser.add_argument("--log-dir", type=Path, default=ROOT / ".stack" / "logs" / "migration")
    args = parser.parse_args()
    chosen = [v for v in args.variants.split(",") if v]
    faults = [f for f in args.faults.split(",") if f]
    common.load_env()
    admin, bootstrap = common.admin_url(), common.bootstrap()
    restarts = [f for f in faults if f in ("broker", "postgres")]
    if restarts and not args.own_stack:
        sys.exit(f"faults {', '.join(restarts)} restart the stack's services: run on a "
                 "private stack (OUTBOX_STACK_DIR and ports of its own) with --own-stack, or "
                 "leave them out with --faults")
    with psycopg.connect(admin) as conn:
        setting = conn.execute("show synchronous_commit").fetchone()
    sync_commit = str(setting[0]) if setting else "?"
    plan = scenario.Plan(rate=args.rate, seconds=args.seconds, warmup=args.warmup,
                         fault_at=args.fault_at, down_for=args.down_for, quiet=args.quiet)
    restart = stack_faults() if restarts else None
    names = common.RunNames.new("migration")
    load_before = common.machine_load()
    rows: list[dict[str, Any]] = []
    log = sys.stderr if args.json else sys.stdout
    started = time.monotonic()
    for fault in faults:
        for round_ in range(args.rounds):
            for name in common.rotated(chosen, round_):
                outcome = scenario.run(name, fault, plan, admin, bootstrap, args.log_dir,
                                       restart, names.database(f"r{round_}_{name}_{fault}"))
                rows.append({**outcome.as_dict(), "round": round_})
                print(f"[{time.monotonic() - started:6.0f}s] {name:<10} {fault:<8} round "
                      f"{round_}: lost {outcome.lost}, {outcome.orders_per_s:.1f} orders/s, "
                      f"p99 {outcome.p99_ms:,.0f} ms, fault took {outcome.fault_seconds:.1f} s, "
                      f"restarts {outcome.restarts}",
                      file=log, flush=True)
    ratio = ratios(rows)
    load = f"{load_before} before, {common.machine_load()} after"
    result = {"plan": vars(plan), "synchronous_commit": sync_commit, "rows": rows,
              "ratios": ratio, "load_average": load}
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"\n{args.rate:g} orders/s offered for {args.seconds:g} s after {args.warmup} "
          f"warm-up orders; faults at {args.fault_at:g} s; synchronous_commit={sync_commit}; "
          f"load average {load}")
    for fault in faults:
        print_table(fault, [r for r in rows if r["fault"] == fault])
    if "none" in faults and {"saga", "legacy"} <= set(chosen):
        print(f"\nno fault: saga / legacy orders/s = "
              f"{ratio['saga_over_legacy_orders_per_s']:.2f}, p99 = "
              f"{ratio['saga_over_legacy_p99']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
