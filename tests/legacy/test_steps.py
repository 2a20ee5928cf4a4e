"""The legacy steps against a real database: the saga's rules, the calls each step owes."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from outbox.settings import Settings
from services.gateway import SimulatedGateway
from services.legacy import steps
from services.order import OrderRequest
from services.runtime import make_engine, prepare_database
from services.tables import orders, reservations, stock

GATEWAY = SimulatedGateway(limit=Decimal("10000"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    settings = Settings(database_url=database_url)
    prepare_database(settings)
    engine = make_engine(settings, pool_size=1)
    yield engine
    engine.dispose()


def place(engine: Engine, customer: str, sku: str, quantity: int = 1) -> steps.Next:
    body = OrderRequest.model_validate({"customerId": customer, "amount": "12.50",
                                        "items": [{"sku": sku, "quantity": quantity}]})
    with Session(engine) as session, session.begin():
        answer, nxt = steps.create_order(session, body, None, None)
    assert answer["status"] == "PENDING" and nxt.step == steps.INVENTORY_STEP
    return nxt


def call(engine: Engine, nxt: steps.Next) -> tuple[dict[str, object], steps.Next | None]:
    with Session(engine) as session, session.begin():
        if nxt.step == steps.INVENTORY_STEP:
            return steps.process_inventory(session, nxt.order_id, nxt.correlation_id)
        if nxt.step == steps.PAYMENT_STEP:
            return steps.process_payment(session, GATEWAY, nxt.order_id, nxt.correlation_id)
        return steps.process_shipping(session, nxt.order_id, nxt.correlation_id)


def status(engine: Engine, order_id: str) -> tuple[str, str | None]:
    with Session(engine) as session:
        row = session.execute(select(orders.c.status, orders.c.reason)
                              .where(orders.c.id == order_id)).one()
    return row.status, row.reason


def available(engine: Engine, sku: str) -> int:
    with Session(engine) as session:
        return int(session.execute(select(stock.c.available).where(stock.c.sku == sku))
                   .scalar_one())


def test_each_step_owes_the_next_and_a_repeat_owes_nothing(engine: Engine) -> None:
    first = place(engine, "c-1", "SKU-BOOK", 2)
    _, to_payment = call(engine, first)
    assert to_payment is not None and to_payment.step == steps.PAYMENT_STEP
    assert call(engine, first)[1] is None  # repeated: already reserved, no second call
    assert available(engine, "SKU-BOOK") == 100_000 - 2
    _, to_shipping = call(engine, to_payment)
    assert to_shipping is not None and to_shipping.step == steps.SHIPPING_STEP
    assert call(engine, to_payment)[1] is None  # never charged twice
    answer, last = call(engine, to_shipping)
    assert (answer["status"], last) == ("COMPLETED", None)
    assert status(engine, first.order_id) == ("COMPLETED", None)
    assert call(engine, to_shipping)[0]["note"] == "already final"


def test_out_of_stock_and_decline_cancel_and_release(engine: Engine) -> None:
    scarce = place(engine, "c-2", "SKU-RARE", 10)  # only 5 in stock
    assert call(engine, scarce)[1] is None
    state, reason = status(engine, scarce.order_id)
    assert state == "CANCELLED" and reason is not None and "SKU-RARE" in reason
    declined = place(engine, "decline-3", "SKU-MUG", 3)
    _, to_payment = call(engine, declined)
    assert to_payment is not None and available(engine, "SKU-MUG") == 100_000 - 3
    assert call(engine, to_payment)[1] is None
    state, reason = status(engine, declined.order_id)
    assert state == "CANCELLED" and reason == "card declined by issuer"
    assert available(engine, "SKU-MUG") == 100_000  # compensated
    with Session(engine) as session:
        assert session.execute(select(reservations.c.status).where(
            reservations.c.order_id == declined.order_id)).scalar() == "RELEASED"


def test_retry_failed_order_calls_the_first_missing_step(engine: Engine) -> None:
    stuck = place(engine, "c-4", "SKU-PEN")
    for expected in (steps.INVENTORY_STEP, steps.PAYMENT_STEP, steps.SHIPPING_STEP):
        with Session(engine) as session, session.begin():
            _, nxt = steps.retry_failed_order(session, stuck.order_id)
        assert nxt is not None and nxt.step == expected
        call(engine, nxt)
    assert status(engine, stuck.order_id) == ("COMPLETED", None)
    with Session(engine) as session, session.begin():
        assert steps.retry_failed_order(session, stuck.order_id)[1] is None
        with pytest.raises(steps.OrderNotFoundError):
            steps.retry_failed_order(session, "no-such-order")
