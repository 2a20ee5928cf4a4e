"""How every saga service builds its consumer: one way, shared.

Each service module (:mod:`services.inventory`, :mod:`services.payment`,
:mod:`services.shipping`, :mod:`services.order`) defines its handlers as plain functions
that ask by annotation for what they use (the payload model, the ``Session``, a
``Publisher`` bound to the service's own outbox) and a ``consumer(base)`` that registers
them here. ``consumer`` is what ``outbox worker services.inventory:consumer`` runs.
"""

from __future__ import annotations

import os

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.record import topic_for
from outbox.settings import Settings


def for_service(base: Settings, schema: str) -> Settings:
    """The settings of the service that owns ``schema``: its own outbox and inbox."""
    return base.model_copy(update={"db_schema": schema})


def topic(base: Settings, aggregate_type: str) -> str:
    """The topic a saga aggregate type is published to."""
    return topic_for(aggregate_type, base.topic_template)


def default_options() -> ConsumerOptions:
    """Service consumers: a crashed member is noticed after 10 s, not Kafka's default 45 s.
    With ``OUTBOX_CONSUMER_INSTANCE_ID`` set (unique per running instance), a restarted
    one takes its partitions back at once (static membership, ConsumerOptions.instance_id).
    """
    return ConsumerOptions(instance_id=os.environ.get("OUTBOX_CONSUMER_INSTANCE_ID") or None,
                           kafka_config={"session.timeout.ms": "10000",
                                         "heartbeat.interval.ms": "1000"})


def service_consumer(base: Settings, schema: str, group: str, engine: Engine | None = None,
                     options: ConsumerOptions | None = None) -> Consumer:
    """The consumer of the service owning ``schema``, in consumer group ``group``."""
    return Consumer(for_service(base, schema), group, engine=engine,
                    options=options or default_options())


def ignore(session: Session, event: IncomingEvent) -> None:
    """Events on a subscribed topic that this service has no business with."""
