"""The seed's four steps and its retry, over the saga's rules and tables.

Each step runs inside the caller's transaction and returns what it answers and the call
it owes the next step *after* the commit (:class:`Next`), so that the delivery — an HTTP
request, a Kafka produce, nothing at all — is the caller's choice. As in the seed, a step
receives only ``{orderId, correlationId}`` and reads the order from the database.

A step that finds its work done (a repeated request) changes nothing and owes nothing:
the same rule as the saga's replayed events. So a request repeated after a crash between
a step's commit and its call does not resume the chain; ``retry-failed-order`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services import inventory, order, payment, shipping
from services.gateway import PaymentGateway
from services.tables import orders, payments, reservations, shipments

INVENTORY_STEP, PAYMENT_STEP, SHIPPING_STEP = (
    "process-inventory", "process-payment", "process-shipping")
CREATE_ORDER, RETRY = "create-order", "retry-failed-order"
FUNCTIONS = (CREATE_ORDER, INVENTORY_STEP, PAYMENT_STEP, SHIPPING_STEP, RETRY)


class OrderNotFoundError(Exception):
    """A step was called for an order id that does not exist."""


@dataclass(frozen=True)
class Next:
    """The call a step owes the next one once its transaction has committed."""

    step: str
    order_id: str
    correlation_id: str

    def body(self) -> dict[str, str]:
        """What the seed sends: ``{orderId, correlationId}``."""
        return {"orderId": self.order_id, "correlationId": self.correlation_id}


Answer = dict[str, Any]


def _pending(session: Session, order_id: str) -> Any:
    row = session.execute(select(orders).where(orders.c.id == order_id)).first()
    if row is None:
        raise OrderNotFoundError(f"no order {order_id!r}")
    return row


def _answer(row: Any, status: str | None = None, note: str | None = None) -> Answer:
    answer: Answer = {"orderId": row.id, "status": status or row.status}
    if note:
        answer["note"] = note
    return answer


def create_order(session: Session, body: order.OrderRequest, idempotency_key: str | None,
                 correlation_id: str | None) -> tuple[Answer, Next]:
    """Insert the order (PENDING); the inventory step is owed."""
    order_id, correlation, _items = order.insert_order(session, body, idempotency_key,
                                                       correlation_id)
    return ({"orderId": order_id, "correlationId": correlation, "status": "PENDING"},
            Next(INVENTORY_STEP, order_id, correlation))


def process_inventory(session: Session, order_id: str, correlation_id: str
                      ) -> tuple[Answer, Next | None]:
    """Reserve the order's lines (inventory.reserve) or cancel it when out of stock."""
    row = _pending(session, order_id)
    if row.status != "PENDING":
        return _answer(row, note="already final"), None
    outcome, reason = inventory.reserve(session, order_id, list(row.items))
    if outcome == inventory.DECIDED:
        return _answer(row, note="already reserved"), None
    if outcome == inventory.OUT_OF_STOCK:
        order.settle(session, order_id, "CANCELLED", reason)
        return _answer(row, "CANCELLED", reason), None
    return _answer(row, note="reserved"), Next(PAYMENT_STEP, order_id, correlation_id)


def process_payment(session: Session, gateway: PaymentGateway, order_id: str,
                    correlation_id: str) -> tuple[Answer, Next | None]:
    """Authorise once (payment.authorize); a decline releases the stock and cancels."""
    row = _pending(session, order_id)
    if row.status != "PENDING":
        return _answer(row, note="already final"), None
    result = payment.authorize(session, gateway, order_id, row.customer_id,
                               Decimal(row.amount), row.currency)
    if result is None:
        return _answer(row, note="already decided"), None
    if result.approved:
        return _answer(row, note="authorized"), Next(SHIPPING_STEP, order_id, correlation_id)
    inventory.release(session, order_id)
    order.settle(session, order_id, "CANCELLED", result.reason)
    return _answer(row, "CANCELLED", result.reason), None


def process_shipping(session: Session, order_id: str, correlation_id: str
                     ) -> tuple[Answer, Next | None]:
    """Schedule the shipment (shipping.schedule) and complete the order."""
    row = _pending(session, order_id)
    if row.status != "PENDING":
        return _answer(row, note="already final"), None
    if shipping.schedule(session, order_id) is None:
        return _answer(row, note="already shipped"), None
    order.settle(session, order_id, "COMPLETED", None)
    return _answer(row, "COMPLETED"), None


def retry_failed_order(session: Session, order_id: str) -> tuple[Answer, Next | None]:
    """Find the first step a pending order is missing and call it again."""
    row = _pending(session, order_id)
    if row.status != "PENDING":
        return _answer(row, note="nothing to retry"), None
    reservation = session.execute(select(reservations.c.status)
                                  .where(reservations.c.order_id == order_id)).scalar()
    charge = session.execute(select(payments.c.status)
                             .where(payments.c.order_id == order_id)).scalar()
    shipped = session.execute(select(shipments.c.shipment_id)
                              .where(shipments.c.order_id == order_id)).scalar()
    if reservation is None:
        step = INVENTORY_STEP
    elif charge is None:
        step = PAYMENT_STEP
    elif charge == "AUTHORIZED" and shipped is None:
        step = SHIPPING_STEP
    else:
        return _answer(row, note=f"no step to retry (payment {charge})"), None
    return _answer(row, note=f"retrying {step}"), Next(step, order_id, row.correlation_id)
