"""Payment service: authorises payment once stock is reserved.

Consumes ``inventory-events`` (``InventoryReserved``) as ``payment-service-group``; emits
``PaymentAuthorized`` or ``PaymentFailed``. Never charges twice for one order: the
``payments`` row is keyed by order id and checked before the gateway is called, the inbox
dedupes redeliveries, and the gateway call carries the order id as idempotency key.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, Publisher
from outbox.settings import Settings
from services import events as ev
from services.gateway import Authorization, PaymentGateway, SimulatedGateway
from services.payloads import InventoryReserved
from services.tables import PAYMENT_SCHEMA, payments
from services.wiring import ignore, service_consumer, topic


def authorize(session: Session, gateway: PaymentGateway, order_id: str, customer_id: str,
              amount: Decimal, currency: str) -> Authorization | None:
    """The payment rule, whatever delivered the request (an event or an HTTP call).

    Calls the gateway (with the order id as idempotency key) and records the answer in
    the ``payments`` row keyed by order id; None when this order was decided before, so
    a replay never charges twice.
    """
    if session.execute(select(payments.c.status)
                       .where(payments.c.order_id == order_id)).first() is not None:
        return None
    result = gateway.authorize(order_id, customer_id, amount, currency)
    session.execute(insert(payments).values(
        order_id=order_id, amount=amount, currency=currency,
        status="AUTHORIZED" if result.approved else "DECLINED",
        gateway_reference=result.reference, reason=result.reason))
    return result


def on_inventory_reserved(gateway: PaymentGateway, reserved: InventoryReserved,
                          session: Session, publisher: Publisher) -> None:
    """Authorise the order's amount with ``gateway`` (bound with functools.partial)."""
    order_id = reserved.order_id
    amount, currency = reserved.amount, reserved.currency
    result = authorize(session, gateway, order_id, reserved.customer_id, amount, currency)
    if result is None:
        return  # already decided for this order: never charge twice
    data: dict[str, object] = {"amount": str(amount), "currency": currency,
                               "paymentReference": result.reference}
    if result.approved:
        event = ev.saga_event(ev.PAYMENT, ev.PAYMENT_AUTHORIZED, order_id,
                              reserved.correlation_id, data)
    else:
        event = ev.saga_event(ev.PAYMENT, ev.PAYMENT_FAILED, order_id,
                              reserved.correlation_id, {**data, "reason": result.reason})
    publisher.publish(event)


def consumer(base: Settings, engine: Engine | None = None,
             options: ConsumerOptions | None = None,
             gateway: PaymentGateway | None = None) -> Consumer:
    """``payment-service-group``: authorises payment once stock is reserved (through
    ``gateway``, simulated by default)."""
    app = service_consumer(base, PAYMENT_SCHEMA, ev.PAYMENT_GROUP, engine, options)
    app.add_handler(topic(base, ev.INVENTORY), ev.INVENTORY_RESERVED, functools.partial(
        on_inventory_reserved, gateway if gateway is not None else SimulatedGateway()))
    app.add_handler(topic(base, ev.INVENTORY), None, ignore)
    return app
