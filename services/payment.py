"""Payment service: authorises payment once stock is reserved.

Consumes ``inventory-events`` (``InventoryReserved``) as ``payment-service-group``; emits
``PaymentAuthorized`` or ``PaymentFailed``. Never charges twice for one order: the
``payments`` row is keyed by order id and checked before the gateway is called, the inbox
dedupes redeliveries, and the gateway call carries the order id as idempotency key.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from outbox.publish import publish
from outbox.settings import Settings
from services import events as ev
from services.gateway import Authorization, PaymentGateway, SimulatedGateway
from services.messages import SagaMessage, field
from services.tables import payments


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


def make_handler(settings: Settings, gateway: PaymentGateway | None = None
                 ) -> Callable[[Session, SagaMessage], None]:
    """The ``InventoryReserved`` handler, bound to a gateway (simulated by default)."""
    gw = gateway if gateway is not None else SimulatedGateway()

    def on_inventory_reserved(session: Session, msg: SagaMessage) -> None:
        order_id = str(field(msg, "orderId"))
        amount = Decimal(str(field(msg, "amount")))
        currency = str(msg.payload.get("currency", "EUR"))
        customer = str(field(msg, "customerId"))
        result = authorize(session, gw, order_id, customer, amount, currency)
        if result is None:
            return  # already decided for this order: never charge twice
        data: dict[str, object] = {"amount": str(amount), "currency": currency,
                                   "paymentReference": result.reference}
        if result.approved:
            event = ev.saga_event(ev.PAYMENT, ev.PAYMENT_AUTHORIZED, order_id,
                                  str(field(msg, "correlationId")), data, causation_id=msg.id)
        else:
            event = ev.saga_event(ev.PAYMENT, ev.PAYMENT_FAILED, order_id,
                                  str(field(msg, "correlationId")),
                                  {**data, "reason": result.reason}, causation_id=msg.id)
        publish(session, event, settings=settings)

    return on_inventory_reserved
