"""One run of one variant under one fault: the same orders, the fault at the same moment,
then what became of every accepted order. Used by bench/migration.py and tests/legacy.

Faults (the victim is the inventory step's process in every variant):

- ``kill``: the victim ``kill -9``-s itself right after committing the step of the order
  placed ``fault_at`` seconds into the load, before it tells the next step
  (:mod:`services.legacy.faults`); a supervisor restarts it after 1 s;
- ``down``: the victim is stopped at ``fault_at`` and started ``down_for`` seconds later;
- ``broker``: the Kafka broker is stopped and started at ``fault_at``;
- ``postgres``: PostgreSQL is stopped with ``-m immediate`` and started at ``fault_at``.

An order is **lost** when it was accepted (2xx) and is still not final once the load and
the fault are over and nothing has changed for ``quiet`` seconds: nothing in the system
will ever move it again (a human could, with ``retry-failed-order``).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from outbox.settings import Settings
from services.demo import fresh_database, fresh_topics
from services.legacy import variants
from services.runtime import DEMO_STOCK, prepare_database

FAULTS = ("none", "kill", "down", "broker", "postgres")
FINAL = ("COMPLETED", "CANCELLED")


@dataclass(frozen=True)
class Plan:
    """The load and the moment of the fault (the same for every variant)."""

    rate: float = 40.0
    seconds: float = 30.0
    warmup: int = 20
    fault_at: float = 10.0
    down_for: float = 10.0
    quiet: float = 30.0
    settle_timeout: float = 240.0


@dataclass
class Outcome:
    """What became of the accepted orders of one run."""

    variant: str
    fault: str
    offered: int
    accepted: int = 0
    completed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicates: int = 0
    orders_per_s: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    rejected: int = 0
    stock_held_by_lost: int = 0
    restarts: dict[str, int] = field(default_factory=dict)
    lost_sample: list[str] = field(default_factory=list)
    fault_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def order_body(n: int, prefix: str = "c") -> dict[str, Any]:
    """Order ``n`` of every run: mostly ordinary, 5 % declined, 4 % for a scarce SKU
    (warm-up orders are all ordinary)."""
    if prefix == "warmup":
        return {"customerId": f"warmup-{n}", "items": [{"sku": "SKU-BOOK", "quantity": 1}],
                "amount": "10.00", "currency": "EUR"}
    customer = f"decline-{prefix}-{n}" if n % 20 == 7 else f"{prefix}-{n % 57}"
    if n % 25 == 3:
        items = [{"sku": "SKU-RARE", "quantity": 1}]
    else:
        items = [{"sku": ("SKU-BOOK", "SKU-MUG", "SKU-PEN")[n % 3], "quantity": 1 + n % 2}]
    return {"customerId": customer, "items": items, "amount": f"{10 + n % 90}.00",
            "currency": "EUR"}


@dataclass
class _Placed:
    sent_at: float
    order_id: str | None = None
    status: int | None = None


def _place(client: httpx.Client, entry: str, body: dict[str, Any]) -> _Placed:
    placed = _Placed(time.time())
    try:
        response = client.post(entry, json=body)
    except httpx.HTTPError:
        return placed
    placed.status = response.status_code
    if response.is_success:
        placed.order_id = str(response.json()["orderId"])
    return placed


def _offer(client: httpx.Client, pool: ThreadPoolExecutor, entry: str, rate: float,
           count: int, prefix: str) -> list[_Placed]:
    started = time.monotonic()
    futures: list[Future[_Placed]] = []
    for n in range(count):
        delay = started + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append(pool.submit(_place, client, entry, order_body(n, prefix)))
    return [f.result() for f in futures]


def _final_count(url: str, ids: list[str]) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("select count(*) from orders.orders where id = any(%s) and "
                           "status in ('COMPLETED', 'CANCELLED')", (ids,)).fetchone()
    return int(row[0]) if row else 0


def _wait_settled(url: str, ids: list[str], quiet: float, timeout: float) -> None:
    """Until every order is final, or nothing changed for ``quiet`` s (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            done = _final_count(url, ids)
        except psycopg.OperationalError:
            done = last  # the database is restarting
        if done >= len(ids):
            return
        if done != last:
            last, changed = done, time.monotonic()
        elif time.monotonic() - changed > quiet:
            return
        time.sleep(0.5)


def _warmed_up(url: str, ids: list[str], expected: int, processes: variants.Processes,
               timeout: float = 180.0) -> None:
    """Every warm-up order final before the measured load: the system works end to end
    (consumers joined their groups, producers know the topics). Waits as long as that
    takes on a busy machine, and says so if it never happens; a process that keeps dying
    fails it at once, with the end of that process's log."""
    deadline = time.monotonic() + timeout
    while len(ids) < expected or _final_count(url, ids) < len(ids):
        looping = sorted(n for n, count in processes.restarts.items() if count >= 3)
        if looping:
            raise RuntimeError(f"{', '.join(looping)} died 3 times during the warm-up; "
                               f"the end of its log:\n{processes.log_tail(looping[0])}")
        if len(ids) < expected or time.monotonic() > deadline:
            raise RuntimeError(f"{len(ids)} of {expected} warm-up orders accepted, "
                               f"{_final_count(url, ids)} final after {timeout:.0f}s: the "
                               "system under test does not work; see its logs")
        time.sleep(0.2)


def _collect(url: str, placed: list[_Placed], outcome: Outcome) -> None:
    accepted = {p.order_id: p for p in placed if p.order_id is not None}
    with psycopg.connect(url) as conn:
        rows = conn.execute("select id, status, extract(epoch from updated_at) "
                            "from orders.orders where id = any(%s)",
                            (list(accepted),)).fetchall()
        taken: dict[str, int] = {
            str(sku): int(n) for sku, n in conn.execute(
                "select sku, available from inventory.stock").fetchall()}
        reserved: dict[str, int] = {str(sku): int(n) for sku, n in conn.execute(
            "select item->>'sku', sum((item->>'quantity')::int) from inventory.reservations r,"
            " jsonb_array_elements(r.items) item where r.status = 'RESERVED' group by 1"
        ).fetchall()}
        twice = conn.execute(
            "select (select count(*) - count(distinct order_id) from payment.payments)"
            " + (select count(*) - count(distinct order_id) from shipping.shipments)"
        ).fetchone()
        held = conn.execute(
            "select count(*) from inventory.reservations r join orders.orders o on o.id = "
            "r.order_id where o.status = 'PENDING' and r.status = 'RESERVED' and "
            "o.id = any(%s)", (list(accepted),)).fetchone()
    latencies, last_final = [], 0.0
    for order_id, status, final_at in rows:
        if status in FINAL:
            latencies.append(float(final_at) - accepted[order_id].sent_at)
            last_final = max(last_final, float(final_at))
            outcome.completed += int(status == "COMPLETED")
            outcome.cancelled += int(status == "CANCELLED")
    lost = [order_id for order_id, status, _ in rows if status not in FINAL]
    outcome.accepted = len(accepted)
    outcome.rejected = len(placed) - len(accepted)
    outcome.lost = len(lost) + len(accepted) - len(rows)
    outcome.lost_sample = sorted(lost)[:5]
    outcome.stock_held_by_lost = int(held[0]) if held else 0
    # Stock taken beyond what live reservations hold: a reservation applied twice.
    over = sum(max(0, DEMO_STOCK[sku] - available - reserved.get(sku, 0))
               for sku, available in taken.items() if sku in DEMO_STOCK)
    outcome.duplicates = over + (int(twice[0]) if twice else 0)
    if latencies:
        first = min(p.sent_at for p in placed)
        outcome.orders_per_s = len(latencies) / max(last_final - first, 1e-9)
        ordered = sorted(latencies)
        outcome.p50_ms = statistics.median(ordered) * 1000
        outcome.p99_ms = (statistics.quantiles(ordered, n=100)[98] if len(ordered) > 1
                          else ordered[0]) * 1000


def run(variant_name: str, fault: str, plan: Plan, admin_url: str, bootstrap: str,
        log_dir: Path, stack_faults: dict[str, Callable[[], None]] | None = None,
        name: str | None = None, keep: bool = False) -> Outcome:
    """Run ``variant_name`` under ``fault`` on a database and topics of its own.

    ``stack_faults`` maps ``broker`` / ``postgres`` to what restarts that service (never
    the shared stack's: bench/migration.py passes its private stack's). ``name`` is the
    run's database (created, and dropped unless ``keep``); its topics are
    ``<name with dashes>-{aggregatetype}-events``.
    """
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: choose from {', '.join(FAULTS)}")
    if fault in ("broker", "postgres") and fault not in (stack_faults or {}):
        raise ValueError(f"fault {fault!r} restarts a service: pass stack_faults")
    name = name or f"mig_{uuid.uuid4().hex[:8]}_{variant_name}_{fault}"
    url = fresh_database(admin_url, name)
    template = name.replace("_", "-") + "-{aggregatetype}-events"
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap,
                        topic_template=template)
    fresh_topics(settings)
    prepare_database(settings)
    env = {"OUTBOX_DATABASE_URL": url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": template}
    log_dir.mkdir(parents=True, exist_ok=True)
    variant = variants.build(variant_name, env, log_dir / name, log_dir / f"{name}.toml")
    total = int(plan.rate * plan.seconds)
    outcome = Outcome(variant_name, fault, total)
    kill_after = plan.warmup + int(plan.rate * plan.fault_at) if fault == "kill" else None
    variant.start(kill_after)
    try:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=200)) as client, \
                ThreadPoolExecutor(64) as pool:
            warm = _offer(client, pool, variant.entry, plan.rate, plan.warmup, "warmup")
            _warmed_up(url, [p.order_id for p in warm if p.order_id], plan.warmup,
                       variant.processes)
            timer = _fault_timer(fault, plan, variant, stack_faults or {}, outcome)
            placed = _offer(client, pool, variant.entry, plan.rate, total, "c")
            timer.join()
        _wait_settled(url, [p.order_id for p in placed if p.order_id], plan.quiet,
                      plan.settle_timeout)
        _collect(url, placed, outcome)
        outcome.restarts = dict(variant.processes.restarts)
    finally:
        variant.processes.stop_all()
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')
    return outcome


def _fault_timer(fault: str, plan: Plan, variant: variants.Variant,
                 stack_faults: dict[str, Callable[[], None]], outcome: Outcome
                 ) -> threading.Thread:
    start = time.monotonic()

    def inject() -> None:
        time.sleep(max(0.0, start + plan.fault_at - time.monotonic()))
        began = time.monotonic()
        if fault == "down":
            variant.processes.stop(variants.VICTIM)
            time.sleep(plan.down_for)
            variant.processes.start(variants.VICTIM)
        elif fault in stack_faults:
            stack_faults[fault]()
        outcome.fault_seconds = time.monotonic() - began

    thread = threading.Thread(target=inject, name=f"fault-{fault}", daemon=True)
    thread.start()
    return thread
