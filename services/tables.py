"""Each saga service's own tables, in its own schema, as separate services would have.

Every schema also holds that service's own ``outbox`` and ``inbox`` (the toolkit's
migrations create them with ``db_schema`` set to the service's schema).
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

UTC_NOW = text("(now() at time zone 'utc')")

ORDERS_SCHEMA, INVENTORY_SCHEMA = "orders", "inventory"
PAYMENT_SCHEMA, SHIPPING_SCHEMA = "payment", "shipping"
SCHEMAS = (ORDERS_SCHEMA, INVENTORY_SCHEMA, PAYMENT_SCHEMA, SHIPPING_SCHEMA)

metadata = MetaData()

orders = Table(
    "orders", metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(255), nullable=False),
    Column("items", JSONB, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(32), nullable=False),
    Column("reason", Text),
    Column("correlation_id", String(64), nullable=False),
    Column("idempotency_key", String(255), unique=True),
    # sha256 of the request body: a reused Idempotency-Key with another body is a conflict.
    Column("request_hash", String(64)),
    Column("created_at", DateTime, nullable=False, server_default=UTC_NOW),
    Column("updated_at", DateTime, nullable=False, server_default=UTC_NOW),
    schema=ORDERS_SCHEMA,
)

# What the order service saw happen to an order: its own events and the ones it consumed.
order_history = Table(
    "order_history", metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("order_id", String(64), nullable=False, index=True),
    Column("event_type", String(255), nullable=False),
    Column("source", String(64), nullable=False),
    Column("occurred_at", DateTime, nullable=False, server_default=UTC_NOW),
    schema=ORDERS_SCHEMA,
)

stock = Table(
    "stock", metadata,
    Column("sku", String(64), primary_key=True),
    Column("available", Integer, nullable=False),
    CheckConstraint("available >= 0", name="ck_stock_available_not_negative"),
    schema=INVENTORY_SCHEMA,
)

reservations = Table(
    "reservations", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("items", JSONB, nullable=False),
    Column("status", String(32), nullable=False),  # RESERVED | RELEASED
    Column("updated_at", DateTime, nullable=False, server_default=UTC_NOW),
    schema=INVENTORY_SCHEMA,
)

payments = Table(
    "payments", metadata,
    # One row per order: the primary key is what makes "never charge twice" hold.
    Column("order_id", String(64), primary_key=True),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(32), nullable=False),  # AUTHORIZED | DECLINED
    Column("gateway_reference", String(255)),
    Column("reason", Text),
    Column("created_at", DateTime, nullable=False, server_default=UTC_NOW),
    schema=PAYMENT_SCHEMA,
)

shipments = Table(
    "shipments", metadata,
    Column("order_id", String(64), primary_key=True),
    Column("shipment_id", String(64), nullable=False),
    Column("carrier", String(64), nullable=False),
    Column("status", String(32), nullable=False),  # SCHEDULED
    Column("created_at", DateTime, nullable=False, server_default=UTC_NOW),
    schema=SHIPPING_SCHEMA,
)
