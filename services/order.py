"""Order service: the HTTP API that places orders, and the consumer that settles them.

``POST /orders`` writes the order (``PENDING``) and ``OrderCreated`` in one transaction and
answers 202; there is no call to the next service any more — the relay publishes the
event, the inventory service reacts. The consumer (``order-service-group``) moves the
order to ``COMPLETED`` on ``ShipmentScheduled`` and to ``CANCELLED`` on
``InventoryReservationFailed`` or ``PaymentFailed``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox import tracing
from outbox.publish import publish
from outbox.settings import Settings
from outbox.uuid7 import uuid7
from services import events as ev
from services.api_input import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_MESSAGE,
    BodyLimit,
    Text,
    validation_error,
)
from services.messages import SagaMessage, field
from services.tables import ORDERS_SCHEMA, UTC_NOW, order_history, orders
from services.wiring import service_consumer, topic

FINAL = ("COMPLETED", "CANCELLED")
HealthCheck = Callable[[], tuple[bool, str]]


class OrderLine(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(extra="forbid")
    sku: Text = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=10_000)


class OrderRequest(BaseModel):
    """The body of ``POST /orders``."""

    model_config = ConfigDict(extra="forbid")
    customer_id: Text = Field(alias="customerId", min_length=1, max_length=255)
    items: list[OrderLine] = Field(min_length=1, max_length=100)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


def _request_hash(body: OrderRequest) -> str:
    canonical = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def insert_order(session: Session, body: OrderRequest, idempotency_key: str | None,
                 correlation_id: str | None = None) -> tuple[str, str, list[dict[str, Any]]]:
    """Insert a ``PENDING`` order; returns its id, correlation id and lines. The one way
    an order row is written, whatever tells the next service (services.legacy too)."""
    order_id = str(uuid7())
    correlation_id = correlation_id or str(uuid7())
    items = [line.model_dump() for line in body.items]
    session.execute(insert(orders).values(
        id=order_id, customer_id=body.customer_id, items=items, amount=body.amount,
        currency=body.currency, status="PENDING", correlation_id=correlation_id,
        idempotency_key=idempotency_key, request_hash=_request_hash(body)))
    return order_id, correlation_id, items


def place_order(settings: Settings, session: Session, body: OrderRequest,
                idempotency_key: str | None, correlation_id: str | None = None
                ) -> dict[str, Any]:
    """Insert the order and its ``OrderCreated`` event; returns (order, created)."""
    order_id, correlation_id, items = insert_order(session, body, idempotency_key,
                                                   correlation_id)
    event = ev.saga_event(ev.ORDER, ev.ORDER_CREATED, order_id, correlation_id, {
        "customerId": body.customer_id, "items": items, "amount": str(body.amount),
        "currency": body.currency})
    publish(session, event, settings=settings)
    session.execute(insert(order_history).values(
        event_id=event.id, order_id=order_id, event_type=ev.ORDER_CREATED, source="order",
        occurred_at=_occurred_at(event.payload)))
    return {"orderId": order_id, "correlationId": correlation_id, "status": "PENDING"}


def create_app(settings: Settings, engine: Engine, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               health: HealthCheck | None = None) -> FastAPI:
    """The order API over ``engine``.

    ``max_body_bytes``: larger request bodies get 413 unread. ``health``: what else
    ``/health`` requires besides the database (the order service's consumer).
    """
    app = FastAPI(title="Order service", version="1")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.post("/orders", status_code=202)
    def create_order(
        body: OrderRequest,
        idempotency_key: Annotated[Text | None, Header(max_length=255)] = None,
        x_correlation_id: Annotated[Text | None, Header(max_length=64)] = None,
        traceparent: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JSONResponse:
        try:
            # OrderCreated carries this span's context (outbox.tracing): one trace per order
            with tracing.server_span("POST /orders", traceparent, {
                    "http.request.method": "POST", "http.route": "/orders"}), \
                    Session(engine) as session, session.begin():
                answer = place_order(settings, session, body, idempotency_key,
                                     x_correlation_id)
            return JSONResponse(answer, status_code=202)
        except IntegrityError:
            if idempotency_key is None:
                raise
        # The key was used before (perhaps by a concurrent retry): answer as the first time.
        with Session(engine) as session:
            row = session.execute(select(orders).where(
                orders.c.idempotency_key == idempotency_key)).one()
        if row.request_hash != _request_hash(body):
            raise HTTPException(409, f"Idempotency-Key {idempotency_key!r} was already used "
                                     "with a different request body")
        return JSONResponse({"orderId": row.id, "correlationId": row.correlation_id,
                             "status": row.status}, status_code=202)

    @app.get("/orders/{order_id}")
    def get_order(order_id: Annotated[Text, Path(max_length=64)]) -> dict[str, Any]:
        with Session(engine) as session:
            row = session.execute(select(orders).where(orders.c.id == order_id)).first()
            if row is None:
                raise HTTPException(404, f"no order {order_id!r}")
            history = session.execute(
                select(order_history).where(order_history.c.order_id == order_id)
                .order_by(order_history.c.occurred_at, order_history.c.event_id)).all()
        return {
            "orderId": row.id, "status": row.status, "reason": row.reason,
            "customerId": row.customer_id, "items": row.items, "amount": str(row.amount),
            "currency": row.currency, "correlationId": row.correlation_id,
            "createdAt": row.created_at.isoformat(), "updatedAt": row.updated_at.isoformat(),
            "history": [{"eventId": str(h.event_id), "eventType": h.event_type,
                         "source": h.source, "at": h.occurred_at.isoformat()} for h in history],
        }

    @app.get("/health")
    def check_health() -> JSONResponse:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("select 1")
        except SQLAlchemyError as exc:
            reason = f"database: {str(exc).splitlines()[0][:MAX_MESSAGE]}"
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        ok, reason = health() if health is not None else (True, "running")
        return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": reason},
                            status_code=200 if ok else 503)

    return app


# --- the order service's consumer side -------------------------------------------------

def _occurred_at(payload: Any) -> dt.datetime:
    """When the event happened, by its producer (``occurredAt``), as naive UTC.

    History is ordered by this, not by when the order service heard of it: events of
    different topics arrive in no particular order relative to each other.
    """
    try:
        when = dt.datetime.fromisoformat(str(payload["occurredAt"]))
    except (KeyError, TypeError, ValueError):
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def _record(session: Session, msg: SagaMessage, source: str) -> str:
    order_id = str(field(msg, "orderId"))
    session.execute(insert(order_history).values(
        event_id=msg.id, order_id=order_id, event_type=str(field(msg, "eventType")),
        source=source, occurred_at=_occurred_at(msg.payload)).on_conflict_do_nothing())
    return order_id


def settle(session: Session, order_id: str, status: str, reason: str | None) -> None:
    """Move a PENDING order to ``status`` (COMPLETED or CANCELLED) with ``reason``."""
    # Only a pending order moves: a late or replayed event never reopens a final state.
    session.execute(update(orders).where(orders.c.id == order_id, orders.c.status == "PENDING")
                    .values(status=status, reason=reason, updated_at=UTC_NOW))


def on_inventory_event(session: Session, msg: IncomingEvent) -> None:
    """Record inventory progress; cancel the order when stock could not be reserved."""
    order_id = _record(session, msg, "inventory")
    if msg.payload.get("eventType") == ev.INVENTORY_RESERVATION_FAILED:
        settle(session, order_id, "CANCELLED", str(msg.payload.get("reason", "out of stock")))


def on_payment_event(session: Session, msg: IncomingEvent) -> None:
    """Record payment progress; cancel the order when payment failed."""
    order_id = _record(session, msg, "payment")
    if msg.payload.get("eventType") == ev.PAYMENT_FAILED:
        settle(session, order_id, "CANCELLED", str(msg.payload.get("reason", "payment failed")))


def on_shipping_event(session: Session, msg: IncomingEvent) -> None:
    """Complete the order once its shipment is scheduled."""
    order_id = _record(session, msg, "shipping")
    if msg.payload.get("eventType") == ev.SHIPMENT_SCHEDULED:
        settle(session, order_id, "COMPLETED", None)


def consumer(base: Settings, engine: Engine | None = None,
             options: ConsumerOptions | None = None) -> Consumer:
    """``order-service-group``: settles orders from the other services' events."""
    app = service_consumer(base, ORDERS_SCHEMA, ev.ORDER_GROUP, engine, options)
    app.add_handler(topic(base, ev.INVENTORY), None, on_inventory_event)
    app.add_handler(topic(base, ev.PAYMENT), None, on_payment_event)
    app.add_handler(topic(base, ev.SHIPPING), None, on_shipping_event)
    return app
