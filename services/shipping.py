"""Shipping service: schedules a shipment once payment is authorised.

Consumes ``payment-events`` (``PaymentAuthorized``) as ``shipping-service-group``; emits
``ShipmentScheduled``.
"""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, Publisher
from outbox.settings import Settings
from outbox.uuid7 import uuid7
from services import events as ev
from services.payloads import PaymentAuthorized
from services.tables import SHIPPING_SCHEMA, shipments
from services.wiring import ignore, service_consumer, topic

CARRIER = "simulated-post"


def schedule(session: Session, order_id: str) -> str | None:
    """The shipping rule: one shipment per order. Returns the new shipment's id, or None
    if the order has one already (a replay)."""
    if session.execute(select(shipments.c.shipment_id)
                       .where(shipments.c.order_id == order_id)).first() is not None:
        return None
    shipment_id = str(uuid7())
    session.execute(insert(shipments).values(order_id=order_id, shipment_id=shipment_id,
                                             carrier=CARRIER, status="SCHEDULED"))
    return shipment_id


def on_payment_authorized(paid: PaymentAuthorized, session: Session,
                          publisher: Publisher) -> None:
    """Schedule one shipment per order."""
    shipment_id = schedule(session, paid.order_id)
    if shipment_id is None:
        return
    publisher.publish(ev.saga_event(ev.SHIPPING, ev.SHIPMENT_SCHEDULED, paid.order_id,
                                    paid.correlation_id,
                                    {"shipmentId": shipment_id, "carrier": CARRIER}))


def consumer(base: Settings, engine: Engine | None = None,
             options: ConsumerOptions | None = None) -> Consumer:
    """``shipping-service-group``: schedules a shipment once payment is authorised."""
    app = service_consumer(base, SHIPPING_SCHEMA, ev.SHIPPING_GROUP, engine, options)
    app.add_handler(topic(base, ev.PAYMENT), ev.PAYMENT_AUTHORIZED, on_payment_authorized)
    app.add_handler(topic(base, ev.PAYMENT), None, ignore)
    return app
