"""What a handler publishes with: ``publish()`` bound to its transaction, its consumer's
outbox settings and the event it is handling.

    @app.handler("order-events", "OrderCreated")
    def reserve(order: OrderCreated, session: Session, publisher: Publisher) -> None:
        ...
        publisher.publish(InventoryReserved(...), aggregate_id=order.order_id)

An event published from a handler carries the incoming event's id as its causation id
and the incoming correlation id, unless it sets them itself; a pydantic model is turned
into an :class:`~outbox.publish.Event` with :meth:`Event.of <outbox.publish.Event.of>`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outbox.publish import Event, publish, publish_async
from outbox.settings import Settings

if TYPE_CHECKING:
    from consumers.message import IncomingEvent


class _Bound:
    def __init__(self, settings: Settings, cause: IncomingEvent | None) -> None:
        self.settings = settings
        self.cause = cause

    def _events(self, items: tuple[Event | BaseModel, ...],
                aggregate_id: str | None) -> list[Event]:
        cause = self.cause
        causation = str(cause.id) if cause is not None else None
        correlation = cause.correlation_id if cause is not None else None
        events: list[Event] = []
        for item in items:
            if isinstance(item, BaseModel):
                if aggregate_id is None:
                    raise TypeError(f"publishing a {type(item).__name__} model needs "
                                    "aggregate_id= (the Kafka key, e.g. the order id)")
                event = Event.of(item, aggregate_id=aggregate_id)
            elif isinstance(item, Event):
                event = item
            else:
                raise TypeError(f"publish() takes Event objects or pydantic models, got "
                                f"{type(item).__name__}")
            if (event.causation_id is None and causation is not None) or (
                    event.correlation_id is None and correlation is not None):
                event = dataclasses.replace(
                    event, causation_id=event.causation_id or causation,
                    correlation_id=event.correlation_id or correlation)
            events.append(event)
        if not events:
            raise TypeError("publish() needs at least one event")
        return events


class Publisher(_Bound):
    """Publishes into a sync handler's transaction (a handler asks for it by annotation)."""

    def __init__(self, session: Session, settings: Settings,
                 cause: IncomingEvent | None = None) -> None:
        super().__init__(settings, cause)
        self.session = session

    def publish(self, *events: Event | BaseModel, aggregate_id: str | None = None
                ) -> list[Event]:
        """Add ``events`` (Events, or models with ``aggregate_id``) to the transaction."""
        batch = self._events(events, aggregate_id)
        return publish(self.session, batch[0], *batch[1:], settings=self.settings)


class AsyncPublisher(_Bound):
    """:class:`Publisher` for ``async def`` handlers."""

    def __init__(self, session: AsyncSession, settings: Settings,
                 cause: IncomingEvent | None = None) -> None:
        super().__init__(settings, cause)
        self.session = session

    async def publish(self, *events: Event | BaseModel, aggregate_id: str | None = None
                      ) -> list[Event]:
        """Add ``events`` (Events, or models with ``aggregate_id``) to the transaction."""
        batch = self._events(events, aggregate_id)
        return await publish_async(self.session, batch[0], *batch[1:],
                                   settings=self.settings)


__all__ = ["AsyncPublisher", "Publisher"]
