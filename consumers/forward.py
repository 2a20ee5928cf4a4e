"""``outbox forward``: deliver events to existing HTTP endpoints, as an idempotent consumer.

A forwarder is a :class:`~consumers.runtime.Consumer` like any other (consumer group,
inbox dedupe, dead letters), composed, not changed. What it adds is how a failing event
waits without stopping other keys:

- **the consume loop** hands each batch's events to the forwarder, which sends them just
  before the batch's transaction commits (the session's ``before_commit``): one chain per
  (route, key), ``concurrency`` chains at a time, each key's events in order. 2xx: done (the
  inbox rows commit, the offsets move on). A retryable failure (408, 429, 5xx, timeout,
  no connection) **parks** the event in the park table, in the same transaction as its
  inbox row, with the time of its next attempt. Any other status, or a body template the
  event cannot fill, dead-letters it. The partition is never held: other keys flow.
- a later event **of a parked key** is parked behind it without being sent: per key, the
  endpoint sees events in partition order.
- **retry workers** (threads) take the oldest parked event of a key when it is due, send
  it, and on success delete it, which makes the next one of that key due at once. A
  ``Retry-After`` sets the delay; exhausted attempts dead-letter the event (and the key
  moves on). While an endpoint does not answer at all, the workers send one probe per
  backoff step instead of trying every parked key.

Every request carries ``Idempotency-Key: <event id>``: the forwarder is at-least-once (a
crash between a 2xx and the commit re-sends), so the endpoint should dedupe on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from consumers.errors import is_connection_lost
from consumers.forward_config import ForwardConfig, Route
from consumers.forward_dlq import REASONS, DeadLetters, StoppingError
from consumers.forward_http import DONE, RETRY, Attempt, ForwardMetrics, RouteClient, retry_delay
from consumers.forward_store import ParkStore, event_key
from consumers.forward_template import TemplateError, render_body
from consumers.message import IncomingEvent
from consumers.runtime import Consumer, ConsumerOptions
from outbox.backoff import compute_backoff
from outbox.exit_codes import EXIT_WORKER_DIED
from outbox.logs import event_fields
from outbox.settings import Settings

log = logging.getLogger("outbox.forward")


def _fields(event: IncomingEvent) -> dict[str, str | None]:
    """The event's id, aggregate id and trace id, for a log line about it."""
    return event_fields(event.id, event.key, event.traceparent)

PENDING = "forward_pending"  # session.info key: (route, event) of this batch, in order
Sent = Attempt | TemplateError | None  # None: parked without sending


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
        for route in config.routes:  # at 0 from the start: increase() sees the first one
            for reason in REASONS:
                self.metrics.dead_lettered.labels(route.name, reason)
        self.store = ParkStore(settings, config.park_table)
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self.workers: list[threading.Thread] = []
        self.worker_failure: BaseException | None = None
        self.worker_db_failures = 0
        self.dead_letters: DeadLetters | None = None
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="forward-send")
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
            pending = session.info.get(PENDING)
            if pending is None:  # the batch's first event: deliver them all at commit
                pending = session.info[PENDING] = []
                event.listen(session, "before_commit", self._deliver_batch)
            pending.extend((route, incoming) for route in routes)
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
        self.dead_letters = DeadLetters(self.settings, self.config.group, self.metrics,
                                        self.consumer.stopping)
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
        self.pool.shutdown()
        self.dead_letters.close()
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
    def _deliver_batch(self, session: Session) -> None:
        """Just before the batch commits: send its events, park or dead-letter what
        failed, in the batch's own transaction."""
        pending: list[tuple[Route, IncomingEvent]] = session.info.pop(PENDING, [])
        chains: dict[tuple[str, str], list[IncomingEvent]] = {}
        for route, incoming in pending:
            chains.setdefault((route.name, event_key(incoming)), []).append(incoming)
        blocked: set[tuple[str, str]] = set()
        for name in {name for name, _ in chains}:
            keys = [key for route, key in chains if route == name]
            blocked |= {(name, key) for key in self.store.parked_keys(session, name, keys)}
        jobs = list(chains.items())

        def run(job: tuple[tuple[str, str], list[IncomingEvent]]) -> list[Sent]:
            return self._chain(self.routes[job[0][0]], job[1], job[0] in blocked)

        results = ([run(jobs[0])] if len(jobs) == 1 else list(self.pool.map(run, jobs)))
        for ((name, _key), events), sent in zip(jobs, results, strict=True):
            for incoming, outcome in zip(events, sent, strict=True):
                self._settle(session, self.routes[name], incoming, outcome)

    def _chain(self, route: Route, events: list[IncomingEvent], blocked: bool) -> list[Sent]:
        """Send one key's events in order; from the first that must wait, the rest wait
        behind it unsent (so does everything once the endpoint stopped answering)."""
        client = self.clients[route.name]
        sent: list[Sent] = []
        for incoming in events:
            if blocked or client.unreachable:
                sent.append(None)
                blocked = True
                continue
            outcome = self._send(route, incoming)
            sent.append(outcome)
            blocked = (isinstance(outcome, Attempt) and outcome.outcome == RETRY
                       and route.max_attempts > 1)
        return sent

    def _settle(self, session: Session, route: Route, incoming: IncomingEvent,
                sent: Sent) -> None:
        assert self.dead_letters is not None
        if sent is None:
            self._park(session, route, incoming)
        elif isinstance(sent, TemplateError):
            self.dead_letters.send(route, incoming, None, 1, sent)
        elif sent.outcome == DONE:
            self.metrics.delivered.labels(route.name).inc()
        elif sent.outcome == RETRY and route.max_attempts > 1:
            self.metrics.retries.labels(route.name).inc()
            delay = retry_delay(route, 1, sent.retry_after)
            log.warning("%s: %s; parked, next attempt in %.1fs", route.name, sent.summary(),
                        delay, extra={"action": "forward_parked", "route": route.name,
                                      **_fields(incoming)})
            self._park(session, route, incoming, sent, delay)
        else:
            self.dead_letters.send(route, incoming, sent, 1)

    def _park(self, session: Session, route: Route, incoming: IncomingEvent,
              attempt: Attempt | None = None, delay: float | None = None) -> None:
        self.store.park(session, route.name, incoming, attempt, delay)
        if not session.info.get("forward_wake"):  # wake a retry worker once it is committed
            session.info["forward_wake"] = True
            event.listen(session, "after_commit", lambda _s: self.wake.set(), once=True)

    def _send(self, route: Route, incoming: IncomingEvent) -> Attempt | TemplateError:
        """Render and send (a template the event cannot fill is returned, not sent)."""
        try:
            body = render_body(route.body, incoming)
        except TemplateError as exc:
            return exc
        return self.clients[route.name].send(incoming, body)

    # ------------------------------------------------------------------ retry workers
    def _work(self) -> None:
        try:
            while not self.consumer.stopping.is_set():
                try:
                    if not self._retry_one():
                        self._idle()
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
        assert self.dead_letters is not None
        routes = [name for name, client in self.clients.items() if not client.paused()]
        if not routes:
            return False
        with Session(self.engine) as session, session.begin():
            parked = self.store.claim_due(session, routes)
            if parked is None:
                return False
            route = self.routes[parked.route]
            sent = self._send(route, parked.event)
            attempts = parked.attempts + 1
            if isinstance(sent, TemplateError):
                self.dead_letters.send(route, parked.event, None, attempts, sent)
                self.store.settle(session, parked)
            elif sent.outcome == DONE:
                self.metrics.delivered.labels(route.name).inc()
                log.info("%s: delivered %s after %d attempts", route.name, parked.event.id,
                         attempts, extra={"action": "forward_retried", "route": route.name,
                                          **_fields(parked.event)})
                self.store.settle(session, parked)
            elif sent.outcome == RETRY and attempts < route.max_attempts:
                self.metrics.retries.labels(route.name).inc()
                self.store.reschedule(session, parked, sent,
                                      retry_delay(route, attempts, sent.retry_after))
            else:
                self.dead_letters.send(route, parked.event, sent, attempts)
                self.store.settle(session, parked)
        return True


__all__ = ["Forwarder"]
