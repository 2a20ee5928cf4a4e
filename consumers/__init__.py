"""The idempotent-consumer runtime: inbox dedupe, handler dispatch, retries, dead letters.

    from consumers import Consumer, IncomingEvent, Publisher

    app = Consumer(settings, group="inventory-service-group")

    @app.handler("order-events", "OrderCreated")
    def reserve(order: OrderCreated, session: Session, publisher: Publisher) -> None:
        ...  # writes and publisher.publish(...) commit with the inbox row

    @app.handler("payment-events", "PaymentFailed")
    async def release(failed: PaymentFailed, session: AsyncSession) -> None:
        ...  # an async handler runs on the async engine, same guarantees

Run it with ``outbox worker module:app``; test it with :mod:`outbox.testing`.
"""

from consumers.message import IncomingEvent, PoisonMessageError
from consumers.publisher import AsyncPublisher, Publisher
from consumers.runtime import Consumer, ConsumerOptions

__all__ = ["AsyncPublisher", "Consumer", "ConsumerOptions", "IncomingEvent",
           "PoisonMessageError", "Publisher"]
