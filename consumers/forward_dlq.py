"""Dead letters of ``outbox forward``: the event, the toolkit's ``dlq.*`` headers, and what
the endpoint said (``dlq.http.status``, ``dlq.http.response``, ``dlq.http.latency.ms``,
``dlq.forward.route``). Produced to ``{topic}.dlq`` and acknowledged before the event is
settled, like every dead letter of the toolkit (consumers/dlq.py)."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message

from consumers.dlq import Failure, dead_letter_headers, dlq_topic
from consumers.forward_config import Route
from consumers.forward_http import RETRY, Attempt, ForwardMetrics
from consumers.forward_store import event_value
from consumers.forward_template import TemplateError
from consumers.message import IncomingEvent
from outbox.backoff import compute_backoff
from outbox.kafka import ordered_producer
from outbox.settings import Settings

log = logging.getLogger("outbox.forward")


class ForwardError(Exception):
    """Why an endpoint did not take an event (the dead letter's exception message)."""


class StoppingError(Exception):
    """Stopping while a dead letter was not acknowledged: the event stays unsettled (its
    transaction rolls back) and is delivered again after the restart."""


REASONS = ("template-failed", "retries-exhausted", "http-rejected")


def reason_of(attempt: Attempt | None, error: Exception | None) -> str:
    """``template-failed``, ``retries-exhausted`` or ``http-rejected``."""
    if isinstance(error, TemplateError):
        return "template-failed"
    if attempt is not None and attempt.outcome == RETRY:
        return "retries-exhausted"
    return "http-rejected"


class DeadLetters:
    """Produces dead letters and waits for each acknowledgement (retrying until stopped)."""

    def __init__(self, settings: Settings, group: str, metrics: ForwardMetrics,
                 stopping: threading.Event) -> None:
        self.group = group
        self.metrics = metrics
        self.stopping = stopping
        self.producer = ordered_producer(settings, {"linger.ms": 1})

    def send(self, route: Route, incoming: IncomingEvent, attempt: Attempt | None,
             attempts: int, error: Exception | None = None) -> None:
        """Dead-letter ``incoming`` of ``route`` after ``attempts`` attempts."""
        reason = reason_of(attempt, error)
        if error is None:
            summary = attempt.summary() if attempt is not None else "not sent"
            error = ForwardError(route.scrub(f"{route.method} {route.url}: {summary}"))
        original = Message(topic=incoming.topic, partition=incoming.partition,
                           offset=incoming.offset,
                           timestamp=(TIMESTAMP_CREATE_TIME, incoming.timestamp_ms),
                           key=incoming.key.encode() if incoming.key is not None else None,
                           value=event_value(incoming), headers=list(incoming.headers.items()))
        headers = dead_letter_headers(original, self.group, Failure(reason, error, attempts))
        headers += [(name, value.encode("utf-8", "replace")) for name, value in {
            "dlq.forward.route": route.name,
            "dlq.http.status": str(attempt.status) if attempt and attempt.status else "",
            "dlq.http.response": attempt.excerpt if attempt is not None else "",
            "dlq.http.latency.ms": f"{attempt.latency * 1000:.1f}" if attempt else ""}.items()]
        self._produce(original, headers)
        self.metrics.dead_lettered.labels(route.name, reason).inc()
        log.error("%s: dead-lettered %s (%s): %s", route.name, incoming.id, reason, error,
                  extra={"action": "forward_dead_lettered", "route": route.name,
                         "reason": reason, "attempts": attempts})

    def _produce(self, original: Message, headers: list[tuple[str, bytes | None]]) -> None:
        errors: list[str] = []
        acknowledged = threading.Event()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())
            acknowledged.set()

        attempt = 0
        while True:
            attempt += 1
            errors.clear()
            acknowledged.clear()
            self.producer.produce(dlq_topic(original.topic() or ""), key=original.key(),
                                  value=original.value(), headers=list(headers),
                                  on_delivery=on_delivery)
            deadline = time.monotonic() + 30
            while not acknowledged.is_set() and time.monotonic() < deadline:
                self.producer.poll(0.1)  # serves any thread's delivery callbacks
            if acknowledged.is_set() and not errors:
                return
            delay = compute_backoff(attempt, cap=10)
            log.error("dead letter not acknowledged (%s); again in %.1fs", errors or "timeout",
                      delay, extra={"action": "forward_dlq_retry"})
            if self.stopping.wait(delay):
                raise StoppingError(f"stopping with a dead letter of {original.topic()} "
                                    "unacknowledged")

    def close(self) -> None:
        """Deliver what is queued (up to 10 s)."""
        self.producer.flush(10)


__all__ = ["DeadLetters", "ForwardError", "StoppingError", "reason_of"]
