"""The dual-write variant's consumers: the seed's "SHOULD BE" code, a plain Kafka consumer
per step (no inbox), ``eachMessage`` → run the step → commit → produce the next event.

Offsets are stored after the message was handled and committed in the background, as
KafkaJS's ``eachMessage`` with auto-commit does: a crash redelivers, and the step's own
rule makes the repeat a no-op — which is also why a crash between the step's commit and
its produce loses the order: the repeat owes nothing. A database error retries the same
message with backoff (the consumer does not skip it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, Message
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from outbox.backoff import compute_backoff
from outbox.logs import with_client_logger
from outbox.record import topic_for
from outbox.settings import Settings
from services.legacy import faults, steps
from services.legacy.delivery import EVENT_FOR, DeliveryError, ProduceAfterCommit
from services.legacy.steps import Answer, Next

log = logging.getLogger("outbox.legacy")

Step = Callable[[Session, str, str], tuple[Answer, Next | None]]


class StepConsumer:
    """Consumes the event that triggers ``step`` and runs it."""

    def __init__(self, settings: Settings, step: str, run: Step, engine: Engine,
                 deliver: ProduceAfterCommit) -> None:
        aggregate, self.event_type = EVENT_FOR[step]
        self.topic = topic_for(aggregate, settings.topic_template)
        self.step = step
        self.run_step = run
        self.engine = engine
        self.deliver = deliver
        self.stopping = threading.Event()
        self.kafka = KafkaConsumer(with_client_logger({
            "bootstrap.servers": settings.kafka_bootstrap_servers, **settings.kafka_config,
            "group.id": f"legacy-{step}", "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000, "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000}))

    def run(self) -> int:
        """Consume until :meth:`request_stop`."""
        self.kafka.subscribe([self.topic])
        try:
            while not self.stopping.is_set():
                msg = self.kafka.poll(0.5)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka: %s", error.str(), extra={"action": "kafka_error"})
                    continue
                if self._handle(msg):
                    self.kafka.store_offsets(msg)
        finally:
            self.kafka.close()
            self.deliver.close()
        return 0

    def request_stop(self) -> None:
        """Finish the current message and stop."""
        self.stopping.set()

    def _handle(self, msg: Message) -> bool:
        """Run the step for ``msg``; False if stopped before it could."""
        try:
            value = json.loads(msg.value() or b"")
            order_id, correlation_id = str(value["orderId"]), str(value["correlationId"])
        except (ValueError, KeyError, TypeError):
            log.error("skipping an unreadable message at %s[%s]@%s", msg.topic(),
                      msg.partition(), msg.offset(), extra={"action": "legacy_skip"})
            return True
        if value.get("eventType") != self.event_type:
            return True
        attempt = 0
        while not self.stopping.is_set():
            try:
                with Session(self.engine) as session, session.begin():
                    _answer, nxt = self.run_step(session, order_id, correlation_id)
                break
            except steps.OrderNotFoundError:
                log.error("no order %s: skipped", order_id, extra={"action": "legacy_skip"})
                return True
            except DBAPIError as exc:
                attempt += 1
                delay = compute_backoff(attempt, cap=5)
                log.warning("%s: database error, retrying in %.1fs: %s", self.step, delay,
                            str(exc).splitlines()[0], extra={"action": "legacy_retry"})
                self.stopping.wait(delay)
        else:
            return False
        faults.step_committed()
        if nxt is not None:
            try:
                self.deliver(nxt)
            except DeliveryError as exc:
                log.error("%s not told: %s", nxt.step, exc, extra={"action": "legacy_lost"})
        return True
