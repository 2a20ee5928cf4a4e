"""Shipping service: schedules a shipment once payment is authorised.

Consumes ``payment-events`` (``PaymentAuthorized``) as ``shipping-service-group``; emits
``ShipmentScheduled``.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from outbox.publish import publish
from outbox.settings import Settings
from outbox.uuid7 import uuid7
from services import events as ev
from services.messages import SagaMessage, field
from services.tables import shipments

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


def on_payment_authorized(settings: Settings, session: Session, msg: SagaMessage) -> None:
    """Schedule one shipment per order."""
    order_id = str(field(msg, "orderId"))
    shipment_id = schedule(session, order_id)
    if shipment_id is None:
        return
    publish(session, ev.saga_event(ev.SHIPPING, ev.SHIPMENT_SCHEDULED, order_id,
                                   str(field(msg, "correlationId")),
                                   {"shipmentId": shipment_id, "carrier": CARRIER},
                                   causation_id=msg.id), settings=settings)
