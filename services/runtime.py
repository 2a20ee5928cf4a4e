"""Wiring: each saga service's settings, consumer and handlers; one relay for all outboxes.

Every service has its own schema holding its tables, its outbox and its inbox, and its
own consumer group. Topic names follow the toolkit's topic template
(``{aggregatetype}-events`` by default), so tests can run the saga on private topics.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox import migrate
from outbox.errors import ConfigurationError
from outbox.record import topic_for
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions
from relay.queries import Queries
from services import events as ev
from services import inventory, order, payment, shipping
from services.gateway import PaymentGateway
from services.supervisor import Supervisor
from services.tables import (
    INVENTORY_SCHEMA,
    ORDERS_SCHEMA,
    PAYMENT_SCHEMA,
    SCHEMAS,
    SHIPPING_SCHEMA,
    metadata,
)

DEMO_STOCK = {"SKU-BOOK": 100_000, "SKU-MUG": 100_000, "SKU-PEN": 100_000, "SKU-RARE": 5}


def for_service(base: Settings, schema: str) -> Settings:
    """The settings of the service that owns ``schema``: its own outbox and inbox."""
    return base.model_copy(update={"db_schema": schema})


def topic(base: Settings, aggregate_type: str) -> str:
    """The topic a saga aggregate type is published to."""
    return topic_for(aggregate_type, base.topic_template)


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


def _ignore(session: Session, event: IncomingEvent) -> None:
    """Events on a subscribed topic that this service has no business with."""


def _bound(fn: Callable[[Settings, Session, IncomingEvent], None],
           settings: Settings) -> Callable[[Session, IncomingEvent], None]:
    return functools.partial(fn, settings)


def order_consumer(base: Settings, engine: Engine | None = None,
                   options: ConsumerOptions | None = None) -> Consumer:
    """``order-service-group``: settles orders from the other services' events."""
    consumer = Consumer(for_service(base, ORDERS_SCHEMA), ev.ORDER_GROUP, engine=engine,
                        options=options or default_options())
    consumer.add_handler(topic(base, ev.INVENTORY), None, order.on_inventory_event)
    consumer.add_handler(topic(base, ev.PAYMENT), None, order.on_payment_event)
    consumer.add_handler(topic(base, ev.SHIPPING), None, order.on_shipping_event)
    return consumer


def inventory_consumer(base: Settings, engine: Engine | None = None,
                       options: ConsumerOptions | None = None) -> Consumer:
    """``inventory-service-group``: reserves stock, releases it when payment fails."""
    settings = for_service(base, INVENTORY_SCHEMA)
    consumer = Consumer(settings, ev.INVENTORY_GROUP, engine=engine,
                        options=options or default_options())
    consumer.add_handler(topic(base, ev.ORDER), ev.ORDER_CREATED,
                         _bound(inventory.on_order_created, settings))
    consumer.add_handler(topic(base, ev.PAYMENT), ev.PAYMENT_FAILED,
                         _bound(inventory.on_payment_failed, settings))
    consumer.add_handler(topic(base, ev.PAYMENT), None, _ignore)
    return consumer


def payment_consumer(base: Settings, engine: Engine | None = None,
                     options: ConsumerOptions | None = None,
                     gateway: PaymentGateway | None = None) -> Consumer:
    """``payment-service-group``: authorises payment once stock is reserved."""
    settings = for_service(base, PAYMENT_SCHEMA)
    consumer = Consumer(settings, ev.PAYMENT_GROUP, engine=engine,
                        options=options or default_options())
    consumer.add_handler(topic(base, ev.INVENTORY), ev.INVENTORY_RESERVED,
                         payment.make_handler(settings, gateway))
    consumer.add_handler(topic(base, ev.INVENTORY), None, _ignore)
    return consumer


def shipping_consumer(base: Settings, engine: Engine | None = None,
                      options: ConsumerOptions | None = None) -> Consumer:
    """``shipping-service-group``: schedules a shipment once payment is authorised."""
    settings = for_service(base, SHIPPING_SCHEMA)
    consumer = Consumer(settings, ev.SHIPPING_GROUP, engine=engine,
                        options=options or default_options())
    consumer.add_handler(topic(base, ev.PAYMENT), ev.PAYMENT_AUTHORIZED,
                         _bound(shipping.on_payment_authorized, settings))
    consumer.add_handler(topic(base, ev.PAYMENT), None, _ignore)
    return consumer


def default_options() -> ConsumerOptions:
    """Service consumers: a crashed member is noticed after 10 s, not Kafka's default 45 s.
    With ``OUTBOX_CONSUMER_INSTANCE_ID`` set (unique per running instance), a restarted
    one takes its partitions back at once (static membership, ConsumerOptions.instance_id).
    """
    return ConsumerOptions(instance_id=os.environ.get("OUTBOX_CONSUMER_INSTANCE_ID") or None,
                           kafka_config={"session.timeout.ms": "10000",
                                         "heartbeat.interval.ms": "1000"})


CONSUMERS: dict[str, Callable[..., Consumer]] = {
    "order": order_consumer, "inventory": inventory_consumer,
    "payment": payment_consumer, "shipping": shipping_consumer,
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
