"""The payloads the saga's handlers consume, as pydantic models.

A handler that annotates a parameter with one of these gets the payload validated: a
payload that does not fit (no ``orderId``, an ``items`` that is not a list of lines) is
dead-lettered at once (``invalid-payload``, with pydantic's message) instead of failing
the handler five times. Fields other teams add are kept (``extra="allow"``); JSON names
are camelCase (the seed's), Python names snake_case. ``outbox events`` lists their JSON
Schemas and ``outbox events asyncapi`` documents them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from services import events as ev


class SagaPayload(BaseModel):
    """The fields every saga event carries at its top level."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    event_type: str
    order_id: str = Field(min_length=1)
    correlation_id: str
    event_id: str | None = None
    occurred_at: str | None = None


class Line(BaseModel):
    """One line of an order."""

    model_config = ConfigDict(extra="allow")
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class OrderCreated(SagaPayload):
    """An order was placed (``order-events``)."""

    __aggregate_type__: ClassVar[str] = ev.ORDER
    __event_type__: ClassVar[str] = ev.ORDER_CREATED
    items: list[Line] = Field(min_length=1)
    customer_id: str | None = None
    amount: Decimal | None = None
    currency: str | None = None

    def order_data(self) -> dict[str, Any]:
        """``customerId``, ``amount``, ``currency`` as the order carried them."""
        return {k: v for k, v in (("customerId", self.customer_id),
                                  ("amount", None if self.amount is None else str(self.amount)),
                                  ("currency", self.currency)) if v is not None}


class InventoryReserved(SagaPayload):
    """Stock is reserved for the order (``inventory-events``)."""

    __aggregate_type__: ClassVar[str] = ev.INVENTORY
    __event_type__: ClassVar[str] = ev.INVENTORY_RESERVED
    customer_id: str = Field(min_length=1)
    amount: Decimal
    currency: str = "EUR"
    items: list[Line] = Field(default_factory=list)


class PaymentAuthorized(SagaPayload):
    """The payment went through (``payment-events``)."""

    __aggregate_type__: ClassVar[str] = ev.PAYMENT
    __event_type__: ClassVar[str] = ev.PAYMENT_AUTHORIZED
    amount: Decimal | None = None
    currency: str | None = None
    payment_reference: str | None = None


class PaymentFailed(SagaPayload):
    """The payment was declined (``payment-events``)."""

    __aggregate_type__: ClassVar[str] = ev.PAYMENT
    __event_type__: ClassVar[str] = ev.PAYMENT_FAILED
    reason: str | None = None
