"""``outbox forward``: deliver events to existing HTTP endpoints, as an idempotent consumer.

A forwarder is a :class:`~consumers.runtime.Consumer` like any other (consumer group,
inbox dedupe, dead letters): its handler POSTs each event to every route that wants it.
What it adds is how a failing event waits without stopping other keys:

- **in the consume loop**, an event whose key has nothing parked is sent at once. 2xx:
  done (the inbox row commits, the offset moves on). A retryable failure (408, 429, 5xx,
  timeout, no connection) **parks** the event in the park table, in the same transaction
  as its inbox row, with the time of its next attempt. Any other status, or a body template
  the event cannot fill, dead-letters it. Either way the handler returns: the partition
  is never held, so other keys flow.
- a later event **of a parked key** is parked behind it without being sent: per key, the
  endpoint sees events in partition order.
- **retry workers** (threads) take the oldest parked event of a key when it is due, send
  it, and on success delete it, which makes the next one of that key due at once. A
  ``Retry-After`` sets the delay; exhausted attempts dead-letter the event (and the key
  moves on).

Every request carries ``Idempotency-Key: <event id>``: the forwarder is at-least-once (a
crash between a 2xx and the commit re-sends), so the endpoint should dedupe on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, Message, Producer
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from consumers.dlq import Failure, dead_letter_headers, dlq_topic
from consumers.errors import is_connection_lost
from consumers.forward_config import ForwardConfig, Route
from consumers.forward_http import DONE, RETRY, Attempt, ForwardMetrics, RouteClient, retry_delay
from consumers.forward_store import ParkStore, event_key, event_value
from consumers.forward_template import TemplateError, render_body
from consumers.message import IncomingEvent
from consumers.runtime import Consumer, ConsumerOptions
from outbox.backoff import compute_backoff
from outbox.exit_codes import EXIT_WORKER_DIED
from outbox.logs import with_client_logger
from outbox.settings import Settings

log = logging.getLogger("outbox.forward")


class ForwardError(Exception):
    """Why an endpoint did not take an event (the dead letter's exception message)."""


class StoppingError(Exception):
    """Stopping while a dead letter was not acknowledged: the event stays unsettled (its
    transaction rolls back) and is delivered again after the restart."""


class Forwarder:
    """Consumes the routes' topics and delivers each event to its routes' endpoints."""

    def __init__(self, settings: Settings, config: ForwardConfig, *,
                 engine: Engine | None = None, options: ConsumerOptions | None = None,
                 poll_interval: float = 0.5) -> None:
        self.settings = settings
        self.config = config
        self.consumer = Consumer(settings, config.group, engine=engine, options=options)
        self.engine = self.consumer.engine
        self.metrics = ForwardMetrics(self.consumer.metrics.registry)
        self.routes = {route.name: route for route in config.routes}
        self.clients = {route.name: RouteClient(route, self.metrics) for route in config.routes}
        self.store = ParkStore(settings, config.park_table)
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self.workers: list[threading.Thread] = []
        self.worker_failure: BaseException | None = None
        self.worker_db_failures = 0
        self.producer: Producer | None = None
        self._register()

    # ------------------------------------------------------------------ wiring
    def _register(self) -> None:
        """One handler per (topic, named type), plus a fallback per topic for the routes
        that take every type; events no route wants are acknowledged and skipped."""
        for topic in self.config.topics:
            routes = [r for r in self.config.routes if topic in r.topics]
            named = {t for r in routes for t in (r.event_types or ())}
            for event_type in sorted(named):
                self.consumer.add_handler(topic, event_type, self._handler(
                    [r for r in routes if r.accepts(topic, event_type)]))
            self.consumer.add_handler(topic, None, self._handler(
                [r for r in routes if r.event_types is None]))

    def _handler(self, routes: list[Route]) -> Callable[[Session, IncomingEvent], None]:
        def handle(session: Session, incoming: IncomingEvent) -> None:
            for route in routes:
                self._forward(session, route, incoming)
        return handle

    def health(self) -> tuple[bool, str]:
        """The consumer's health, and every retry worker alive with its database."""
        ok, reason = self.consumer.health()
        if not ok:
            return ok, reason
        if self.worker_failure is not None or any(not w.is_alive() for w in self.workers):
            return False, "a retry worker stopped"
        if self.worker_db_failures:
            return False, f"retry workers: database unavailable ({self.worker_db_failures})"
        return True, "forwarding"

    def run(self) -> int:
        """Create the park table, start the retry workers, consume until stopped."""
        self.store.create(self.engine)
        self.producer = Producer(with_client_logger({
            **self.settings.producer_config(), "enable.idempotence": True, "acks": "all",
            "partitioner": "murmur2_random", "linger.ms": 1}))
        for n in range(self.config.workers):
            worker = threading.Thread(target=self._work, name=f"forward-retry-{n}", daemon=True)
            worker.start()
            self.workers.append(worker)
        log.info("forwarding %s to %d route(s)", ", ".join(self.config.topics),
                 len(self.routes), extra={"action": "forward_start", "group": self.config.group,
                                          "routes": [r.describe() for r in self.config.routes]})
        code = self.consumer.run()
        self.wake.set()
        for worker in self.workers:
            worker.join(max(route.timeout for route in self.config.routes) + 5)
        self.producer.flush(10)
        for client in self.clients.values():
            client.close()
        if self.worker_failure is not None:
            return EXIT_WORKER_DIED
        return code

    def request_stop(self) -> None:
        """Finish the current batch and the retries in flight, then return from run()."""
        self.consumer.request_stop()
        self.wake.set()

    # ------------------------------------------------------------------ consume loop
    def _forward(self, session: Session, route: Route, incoming: IncomingEvent) -> None:
        if self.store.has_parked(session, route.name, event_key(incoming)):
            self._park(session, route, incoming)  # behind an earlier event of its key
            return
        if self.clients[route.name].unreachable:
            self._park(session, route, incoming)  # let a retry worker find out first
            return
        attempt = self._send(route, incoming)
        if attempt is None:
            return  # dead-lettered (the template cannot be filled)
        if attempt.outcome == DONE:
            self.metrics.delivered.labels(route.name).inc()
        elif attempt.outcome == RETRY and route.max_attempts > 1:
            self.metrics.retries.labels(route.name).inc()
            delay = retry_delay(route, 1, attempt.retry_after)
            log.warning("%s: %s; parked, next attempt in %.1fs", route.name, attempt.summary(),
                        delay, extra={"action": "forward_parked", "route": route.name,
                                      "event_id": str(incoming.id)})
            self._park(session, route, incoming, attempt, delay)
        else:
            self._dead_letter(route, incoming, attempt, 1)

    def _park(self, session: Session, route: Route, incoming: IncomingEvent,
              attempt: Attempt | None = None, delay: float | None = None) -> None:
        self.store.park(session, route.name, incoming, attempt, delay)
        if not session.info.get("forward_wake"):  # wake a retry worker once it is committed
            session.info["forward_wake"] = True
            event.listen(session, "after_commit", lambda _s: self.wake.set(), once=True)

    def _send(self, route: Route, incoming: IncomingEvent) -> Attempt | None:
        """Render and send; a template the event cannot fill dead-letters it (None)."""
        try:
            body = render_body(route.body, incoming)
        except TemplateError as exc:
            self._dead_letter(route, incoming, None, 1, exc)
            return None
        return self.clients[route.name].send(incoming, body)

    # ------------------------------------------------------------------ retry workers
    def _work(self) -> None:
        try:
            while not self.consumer.stopping.is_set():
                try:
                    busy = self._retry_one()
                    self.worker_db_failures = 0
                except Exception as exc:
                    if not is_connection_lost(exc):
                        raise
                    self.worker_db_failures += 1
                    delay = compute_backoff(self.worker_db_failures, cap=10)
                    log.warning("retry worker: database unavailable, again in %.1fs: %s",
                                delay, str(exc).splitlines()[0],
                                extra={"action": "forward_db_unavailable"})
                    self.consumer.stopping.wait(delay)
                    continue
                if not busy:
                    self._idle()
        except StoppingError:
            return
        except BaseException as exc:
            # A bug, not an outage: the process must not go on half-working.
            self.worker_failure = exc
            log.exception("retry worker stopped; stopping the forwarder",
                          extra={"action": "forward_worker_died"})
            self.consumer.request_stop()

    def _idle(self) -> None:
        names = list(self.routes)
        with Session(self.engine) as session:
            due = self.store.next_due(session, names)
            for route, count in self.store.counts(session, names).items():
                self.metrics.parked.labels(route).set(count)
        wait = self.poll_interval if due is None else max(0.0, min(due, self.poll_interval))
        if self.wake.wait(wait):
            self.wake.clear()

    def _retry_one(self) -> bool:
        """Try the oldest due parked event of some key; False if none was due."""
        with Session(self.engine) as session, session.begin():
            parked = self.store.claim_due(session, list(self.routes))
            if parked is None:
                return False
            route = self.routes[parked.route]
            attempt = self._send(route, parked.event)
            attempts = parked.attempts + 1
            if attempt is None or attempt.outcome == DONE:
                if attempt is not None:
                    self.metrics.delivered.labels(route.name).inc()
                    log.info("%s: delivered %s after %d attempts", route.name, parked.event.id,
                             attempts, extra={"action": "forward_retried",
                                              "route": route.name})
                self.store.settle(session, parked)
            elif attempt.outcome == RETRY and attempts < route.max_attempts:
                self.metrics.retries.labels(route.name).inc()
                delay = retry_delay(route, attempts, attempt.retry_after)
                self.store.reschedule(session, parked, attempt, delay)
            else:
                self._dead_letter(route, parked.event, attempt, attempts)
                self.store.settle(session, parked)
        return True

    # ------------------------------------------------------------------ dead letters
    def _dead_letter(self, route: Route, incoming: IncomingEvent, attempt: Attempt | None,
                     attempts: int, error: Exception | None = None) -> None:
        """Produce the event to ``{topic}.dlq`` with why, and wait for the acknowledgement."""
        if error is not None:
            reason = "template-failed"
        elif attempt is not None and attempt.outcome == RETRY:
            reason = "retries-exhausted"
        else:
            reason = "http-rejected"
        if error is None:
            summary = attempt.summary() if attempt is not None else "not sent"
            error = ForwardError(route.scrub(f"{route.method} {route.url}: {summary}"))
        original = Message(topic=incoming.topic, partition=incoming.partition,
                           offset=incoming.offset, timestamp=(TIMESTAMP_CREATE_TIME,
                                                               incoming.timestamp_ms),
                           key=incoming.key.encode() if incoming.key is not None else None,
                           value=event_value(incoming), headers=list(incoming.headers.items()))
        headers = dead_letter_headers(original, self.config.group,
                                      Failure(reason, error, attempts))
        headers += [(name, value.encode("utf-8", "replace")) for name, value in {
            "dlq.forward.route": route.name,
            "dlq.http.status": str(attempt.status) if attempt and attempt.status else "",
            "dlq.http.response": attempt.excerpt if attempt is not None else "",
            "dlq.http.latency.ms": f"{attempt.latency * 1000:.1f}" if attempt else ""}.items()]
        self._produce_dead_letter(original, headers)
        self.metrics.dead_lettered.labels(route.name, reason).inc()
        log.error("%s: dead-lettered %s (%s): %s", route.name, incoming.id, reason, error,
                  extra={"action": "forward_dead_lettered", "route": route.name,
                         "reason": reason, "attempts": attempts})

    def _produce_dead_letter(self, original: Message, headers: list[tuple[str, bytes]]) -> None:
        assert self.producer is not None
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())

        attempt = 0
        while True:
            attempt += 1
            errors.clear()
            self.producer.produce(dlq_topic(original.topic() or ""), key=original.key(),
                                  value=original.value(), headers=list(headers),
                                  on_delivery=on_delivery)
            if not self.producer.flush(30) and not errors:
                return
            delay = compute_backoff(attempt, cap=10)
            log.error("dead letter not acknowledged (%s); again in %.1fs", errors or "timeout",
                      delay, extra={"action": "forward_dlq_retry"})
            if self.consumer.stopping.wait(delay):
                raise StoppingError(f"stopping with a dead letter of {original.topic()} "
                                    "unacknowledged")


__all__ = ["ForwardError", "Forwarder"]
