"""Inventory service: reserves stock for new orders, releases it when payment fails.

Consumes ``order-events`` (``OrderCreated``) and ``payment-events`` (``PaymentFailed``) as
``inventory-service-group``; emits ``InventoryReserved``, ``InventoryReservationFailed``
and ``InventoryReleased`` through its own outbox, in the same transaction as the stock
change and the inbox row.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, Publisher
from outbox.settings import Settings
from services import events as ev
from services.payloads import OrderCreated, PaymentFailed
from services.tables import INVENTORY_SCHEMA, reservations, stock
from services.wiring import ignore, service_consumer, topic


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


def on_order_created(order: OrderCreated, session: Session, publisher: Publisher) -> None:
    """Reserve every line of the order atomically, or none of them."""
    items = [line.model_dump() for line in order.items]
    outcome, reason = reserve(session, order.order_id, items)
    if outcome == DECIDED:
        return  # a replayed OrderCreated (new delivery of an old order): decided already
    if outcome == OUT_OF_STOCK:
        publisher.publish(ev.saga_event(
            ev.INVENTORY, ev.INVENTORY_RESERVATION_FAILED, order.order_id,
            order.correlation_id, {**order.order_data(), "reason": reason}))
        return
    publisher.publish(ev.saga_event(ev.INVENTORY, ev.INVENTORY_RESERVED, order.order_id,
                                    order.correlation_id,
                                    {**order.order_data(), "items": items}))


def on_payment_failed(failed: PaymentFailed, session: Session, publisher: Publisher) -> None:
    """Compensate: put the reserved stock back and say so."""
    released = release(session, failed.order_id)
    if released is None:
        return  # nothing reserved, or already released
    publisher.publish(ev.saga_event(ev.INVENTORY, ev.INVENTORY_RELEASED, failed.order_id,
                                    failed.correlation_id, {"items": released}))


def consumer(base: Settings, engine: Engine | None = None,
             options: ConsumerOptions | None = None) -> Consumer:
    """``inventory-service-group``: reserves stock, releases it when payment fails."""
    app = service_consumer(base, INVENTORY_SCHEMA, ev.INVENTORY_GROUP, engine, options)
    app.add_handler(topic(base, ev.ORDER), ev.ORDER_CREATED, on_order_created)
    app.add_handler(topic(base, ev.PAYMENT), ev.PAYMENT_FAILED, on_payment_failed)
    app.add_handler(topic(base, ev.PAYMENT), None, ignore)
    return app


def restock(session: Session, levels: dict[str, int]) -> None:
    """Set stock levels (demo and tests)."""
    for sku, available in levels.items():
        session.execute(insert(stock).values(sku=sku, available=available)
                        .on_conflict_do_update(index_elements=[stock.c.sku],
                                               set_={"available": available}))
