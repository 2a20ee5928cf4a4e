"""Wiring: each saga service's settings, consumer and handlers; one relay for all outboxes.

Every service has its own schema holding its tables, its outbox and its inbox, and its
own consumer group. Topic names follow the toolkit's topic template
(``{aggregatetype}-events`` by default), so tests can run the saga on private topics.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from consumers import Consumer
from outbox import migrate
from outbox.errors import ConfigurationError
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions
from relay.queries import Queries
from services import inventory, order, payment, shipping
from services.supervisor import Supervisor
from services.tables import SCHEMAS, metadata
from services.wiring import default_options, for_service, topic

DEMO_STOCK = {"SKU-BOOK": 100_000, "SKU-MUG": 100_000, "SKU-PEN": 100_000, "SKU-RARE": 5}


def make_engine(base: Settings, pool_size: int = 5) -> Engine:
    """An engine on the saga's database."""
    return create_engine(base.sqlalchemy_url(), pool_size=pool_size, pool_pre_ping=True)


def prepare_database(base: Settings, stock: dict[str, int] | None = None) -> None:
    """Install each service's outbox and inbox (toolkit migrations) and its own tables."""
    for schema in SCHEMAS:
        settings = for_service(base, schema)
        migrate.upgrade(settings)
        # NOTIFY wakes the relay at once after a commit; polling stays the guarantee.
        with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
            conn.execute(Queries.for_settings(settings).notify_trigger)
    engine = make_engine(base, pool_size=1)
    try:
        metadata.create_all(engine, checkfirst=True)
        with Session(engine) as session, session.begin():
            inventory.restock(session, stock if stock is not None else DEMO_STOCK)
    finally:
        engine.dispose()


# Each service's consumer, by the name of its command (``outbox-saga inventory``); each
# is also an app of ``outbox worker`` (``services.inventory:consumer``).
CONSUMERS: dict[str, Callable[..., Consumer]] = {
    "order": order.consumer, "inventory": inventory.consumer,
    "payment": payment.consumer, "shipping": shipping.consumer,
}


class RelayGroup:
    """One relay per service outbox, in one process: "one relay for all".

    Each relay is a worker of a :class:`~services.supervisor.Supervisor`: if one of them
    stops on its own, the process stops (exit code EXIT_WORKER_DIED) instead of relaying
    three outboxes of four.
    """

    def __init__(self, base: Settings, options: RelayOptions | None = None) -> None:
        self.relays = [Relay(for_service(base, schema), options or RelayOptions(
            poll_interval=0.2)) for schema in SCHEMAS]

    def check_tables(self) -> None:
        """Every service's outbox is there and up to date, or one ConfigurationError
        naming what is missing (a start-up check: the relays would stop on it)."""
        problems: list[str] = []
        with psycopg.connect(self.relays[0].settings.libpq_url(), connect_timeout=5,
                             application_name="outbox-saga-preflight") as conn:
            for relay in self.relays:
                problem = relay.queries.schema_problem(conn)
                if problem is not None:
                    problems.append(problem)
        if problems:
            raise ConfigurationError("; ".join(problems) + " (the saga's schemas: run "
                                     "`outbox-saga setup`)")

    def start(self, supervisor: Supervisor) -> None:
        """Run every relay as a worker of ``supervisor``."""
        for relay in self.relays:
            supervisor.start(f"relay-{relay.settings.db_schema}", relay.run,
                             relay.request_stop, health=_relay_health(relay))


def _relay_health(relay: Relay) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        ok, info = relay.health.snapshot()
        return ok, str(info.get("detail", ""))

    return check


__all__ = ["CONSUMERS", "DEMO_STOCK", "RelayGroup", "default_options", "for_service",
           "make_engine", "prepare_database", "topic"]
