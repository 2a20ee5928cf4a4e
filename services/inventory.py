"""Inventory service: reserves stock for new orders, releases it when payment fails.

Consumes ``order-events`` (``OrderCreated``) and ``payment-events`` (``PaymentFailed``) as
``inventory-service-group``; emits ``InventoryReserved``, ``InventoryReservationFailed``
and ``InventoryReleased`` through its own outbox, in the same transaction as the stock
change and the inbox row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from outbox.publish import publish
from outbox.settings import Settings
from services import events as ev
from services.messages import SagaMessage, field
from services.tables import reservations, stock


class OutOfStockError(Exception):
    """Not enough stock for one line of an order."""


def _reserve_lines(session: Session, items: list[dict[str, Any]]) -> None:
    # Lines are taken in SKU order so two orders for the same SKUs cannot deadlock.
    for item in sorted(items, key=lambda i: str(i["sku"])):
        taken = session.execute(
            update(stock)
            .where(stock.c.sku == item["sku"], stock.c.available >= int(item["quantity"]))
            .values(available=stock.c.available - int(item["quantity"]))
            .returning(stock.c.sku)
        ).first()
        if taken is None:
            raise OutOfStockError(f"not enough stock of {item['sku']} for {item['quantity']}")


RESERVED, OUT_OF_STOCK, DECIDED = "reserved", "out-of-stock", "decided"


def reserve(session: Session, order_id: str,
            items: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The inventory rule, whatever delivered the request (an event or an HTTP call).

    Reserves every line of the order atomically, or none of them. Returns
    ``(RESERVED, None)``, ``(OUT_OF_STOCK, reason)``, or ``(DECIDED, None)`` when the
    order was reserved before: a replay (a new delivery of an old order) changes nothing.
    """
    already = session.execute(
        select(reservations.c.status).where(reservations.c.order_id == order_id)).first()
    if already is not None:
        return DECIDED, None
    savepoint = session.begin_nested()
    try:
        _reserve_lines(session, items)
    except OutOfStockError as exc:
        savepoint.rollback()
        return OUT_OF_STOCK, str(exc)
    savepoint.commit()
    session.execute(insert(reservations).values(order_id=order_id, items=items,
                                                status="RESERVED"))
    return RESERVED, None


def release(session: Session, order_id: str) -> list[dict[str, Any]] | None:
    """Compensate: put an order's reserved stock back; returns the lines released, or
    None if nothing was reserved or it was released already."""
    row = session.execute(
        select(reservations.c["items"], reservations.c.status)
        .where(reservations.c.order_id == order_id).with_for_update()).first()
    if row is None or row.status != "RESERVED":
        return None
    for item in sorted(row.items, key=lambda i: str(i["sku"])):
        session.execute(update(stock).where(stock.c.sku == item["sku"])
                        .values(available=stock.c.available + int(item["quantity"])))
    session.execute(update(reservations).where(reservations.c.order_id == order_id)
                    .values(status="RELEASED"))
    items: list[dict[str, Any]] = row.items
    return items


def on_order_created(settings: Settings, session: Session, msg: SagaMessage) -> None:
    """Reserve every line of the order atomically, or none of them."""
    order_id = str(field(msg, "orderId"))
    correlation_id = str(field(msg, "correlationId"))
    items: list[dict[str, Any]] = list(field(msg, "items"))
    outcome, reason = reserve(session, order_id, items)
    if outcome == DECIDED:
        return
    data = {k: msg.payload[k] for k in ("customerId", "amount", "currency") if k in msg.payload}
    if outcome == OUT_OF_STOCK:
        publish(session, ev.saga_event(ev.INVENTORY, ev.INVENTORY_RESERVATION_FAILED, order_id,
                                       correlation_id, {**data, "reason": reason},
                                       causation_id=msg.id), settings=settings)
        return
    publish(session, ev.saga_event(ev.INVENTORY, ev.INVENTORY_RESERVED, order_id, correlation_id,
                                   {**data, "items": items}, causation_id=msg.id),
            settings=settings)


def on_payment_failed(settings: Settings, session: Session, msg: SagaMessage) -> None:
    """Compensate: put the reserved stock back and say so."""
    order_id = str(field(msg, "orderId"))
    released = release(session, order_id)
    if released is None:
        return  # nothing reserved, or already released
    publish(session, ev.saga_event(ev.INVENTORY, ev.INVENTORY_RELEASED, order_id,
                                   str(field(msg, "correlationId")), {"items": released},
                                   causation_id=msg.id), settings=settings)


def restock(session: Session, levels: dict[str, int]) -> None:
    """Set stock levels (demo and tests)."""
    for sku, available in levels.items():
        session.execute(insert(stock).values(sku=sku, available=available)
                        .on_conflict_do_update(index_elements=[stock.c.sku],
                                               set_={"available": available}))
