"""The idempotent-consumer runtime: inbox dedupe, handler dispatch, retries, dead letters.

    from consumers import Consumer, IncomingEvent

    app = Consumer(settings, group="inventory-service-group")

    @app.handler("order-events", "OrderCreated")
    def reserve(session: Session, event: IncomingEvent) -> None:
        ...  # writes and publish(session, ...) commit with the inbox row

    app.install_signal_handlers()
    app.run()
"""

from consumers.message import IncomingEvent, PoisonMessageError
from consumers.runtime import Consumer, ConsumerOptions

__all__ = ["Consumer", "ConsumerOptions", "IncomingEvent", "PoisonMessageError"]
