"""The legacy functions as HTTP endpoints: ``POST /functions/v1/<function>``, as on the
seed's platform, one or several per process. Each commits, then calls the next step with
the configured delivery (:mod:`services.legacy.delivery`); the answer does not wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from outbox.settings import Settings
from services import order
from services.gateway import PaymentGateway
from services.legacy import faults, steps
from services.legacy.delivery import DeliveryError
from services.legacy.steps import Next, OrderNotFoundError
from services.tables import orders

log = logging.getLogger("outbox.legacy")

Deliver = Callable[[Next], None]
StepBody = Annotated[dict[str, Any], Body()]


def _ids(body: dict[str, Any]) -> tuple[str, str]:
    order_id, correlation_id = body.get("orderId"), body.get("correlationId")
    if not isinstance(order_id, str) or not order_id:
        raise HTTPException(400, "orderId is required")
    return order_id, correlation_id if isinstance(correlation_id, str) else ""


def create_app(functions: list[str], engine: Engine, deliver: Deliver | None,
               gateway: PaymentGateway, outbox_settings: Settings | None = None) -> FastAPI:
    """An app serving ``functions``. ``deliver`` None with ``outbox_settings``: create-order
    publishes ``OrderCreated`` through the outbox instead of calling (the strangler step)."""
    app = FastAPI(title="legacy order functions", version="1")

    def run_step(step: Callable[[Session], tuple[dict[str, Any], Next | None]]
                 ) -> dict[str, Any]:
        try:
            with Session(engine) as session, session.begin():
                answer, nxt = step(session)
        except OrderNotFoundError as exc:
            raise HTTPException(404, str(exc)) from None
        faults.step_committed()
        if nxt is not None:
            _call(nxt)
        return answer

    def _call(nxt: Next) -> None:
        if deliver is None:
            return
        try:
            deliver(nxt)
        except DeliveryError as exc:
            # The seed's `await producer.send()` would throw here, after the commit.
            log.error("%s not told: %s", nxt.step, exc, extra={"action": "legacy_lost"})
            raise HTTPException(500, f"saved, but {nxt.step} was not told: {exc}") from None

    if steps.CREATE_ORDER in functions:
        @app.post("/functions/v1/create-order", status_code=201)
        def create_order(body: order.OrderRequest,
                         idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
                         x_correlation_id: Annotated[str | None, Header(max_length=64)] = None,
                         ) -> JSONResponse:
            try:
                if deliver is None and outbox_settings is not None:
                    with Session(engine) as session, session.begin():
                        answer = order.place_order(outbox_settings, session, body,
                                                   idempotency_key, x_correlation_id)
                    return JSONResponse(answer, status_code=201)
                return JSONResponse(run_step(lambda s: steps.create_order(
                    s, body, idempotency_key, x_correlation_id)), status_code=201)
            except IntegrityError:
                if idempotency_key is None:
                    raise
            with Session(engine) as session:  # a repeated key: the same order, no new call
                row = session.execute(select(orders).where(
                    orders.c.idempotency_key == idempotency_key)).one()
            return JSONResponse({"orderId": row.id, "correlationId": row.correlation_id,
                                 "status": row.status}, status_code=200)

    if steps.INVENTORY_STEP in functions:
        @app.post("/functions/v1/process-inventory")
        def process_inventory(body: StepBody) -> dict[str, Any]:
            order_id, correlation_id = _ids(body)
            return run_step(lambda s: steps.process_inventory(s, order_id, correlation_id))

    if steps.PAYMENT_STEP in functions:
        @app.post("/functions/v1/process-payment")
        def process_payment(body: StepBody) -> dict[str, Any]:
            order_id, correlation_id = _ids(body)
            return run_step(lambda s: steps.process_payment(s, gateway, order_id,
                                                            correlation_id))

    if steps.SHIPPING_STEP in functions:
        @app.post("/functions/v1/process-shipping")
        def process_shipping(body: StepBody) -> dict[str, Any]:
            order_id, correlation_id = _ids(body)
            return run_step(lambda s: steps.process_shipping(s, order_id, correlation_id))

    if steps.RETRY in functions:
        @app.post("/functions/v1/retry-failed-order")
        def retry_failed_order(body: StepBody) -> dict[str, Any]:
            order_id, _ = _ids(body)
            return run_step(lambda s: steps.retry_failed_order(s, order_id))

    @app.get("/health")
    def health() -> dict[str, str]:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
        return {"status": "ok"}

    return app
