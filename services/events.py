"""The saga's event vocabulary: topics, event types and the payload every event carries.

Every payload is a JSON object with at least ``eventType``, ``eventId``, ``orderId``,
``correlationId`` and ``occurredAt`` at its top level (pinned in DESIGN.md), because the
seed's consumers — and any other team's consumer — read those from the message value.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from outbox.publish import Event
from outbox.uuid7 import uuid7

# aggregate type -> topic via the default template "{aggregatetype}-events"
ORDER, INVENTORY, PAYMENT, SHIPPING = "order", "inventory", "payment", "shipping"
ORDER_EVENTS, INVENTORY_EVENTS = "order-events", "inventory-events"
PAYMENT_EVENTS, SHIPPING_EVENTS = "payment-events", "shipping-events"

ORDER_CREATED = "OrderCreated"
INVENTORY_RESERVED = "InventoryReserved"
INVENTORY_RESERVATION_FAILED = "InventoryReservationFailed"
INVENTORY_RELEASED = "InventoryReleased"
PAYMENT_AUTHORIZED = "PaymentAuthorized"
PAYMENT_FAILED = "PaymentFailed"
SHIPMENT_SCHEDULED = "ShipmentScheduled"

# consumer groups (pinned)
ORDER_GROUP = "order-service-group"
INVENTORY_GROUP = "inventory-service-group"
PAYMENT_GROUP = "payment-service-group"
SHIPPING_GROUP = "shipping-service-group"


def saga_event(aggregate_type: str, event_type: str, order_id: str, correlation_id: str,
               data: dict[str, Any], causation_id: UUID | str | None = None) -> Event:
    """An outbox event for ``order_id`` whose payload carries the pinned top-level fields."""
    event_id = uuid7()
    payload = {
        "eventType": event_type,
        "eventId": str(event_id),
        "orderId": order_id,
        "correlationId": correlation_id,
        "occurredAt": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        **data,
    }
    return Event(
        id=event_id,
        aggregate_type=aggregate_type,
        aggregate_id=order_id,
        event_type=event_type,
        payload=payload,
        correlation_id=correlation_id,
        causation_id=str(causation_id) if causation_id is not None else None,
    )
