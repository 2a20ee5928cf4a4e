"""The idempotent consumer: handlers per topic and event type, exactly-once effects.

For each batch of messages, in **one** database transaction, the inbox rows
(group, event id) of the whole batch are inserted in one statement and the handlers of
the new ones run with the same session — so each handler's writes and any events it
``publish()``-es commit together with the inbox rows, or not at all. Kafka offsets are
committed only after that commit. A crash in between redelivers the batch; the inbox
rows make the redelivery a no-op (:mod:`consumers.batch`). A consumer with an ``async
def`` handler runs each batch's transaction as a coroutine on the async engine, awaited
here on an event loop this thread owns: the loop below is the same for both kinds.

Failures, in order of what they mean:

- the database is unreachable: not the message's fault. The batch is rewound (seek) and
  retried after a backoff, forever, without counting attempts.
- the message is poison — too large, unreadable, not a JSON object, an unknown event
  type with no fallback handler, a payload failing its model (:mod:`consumers.routing`):
  dead-lettered at once.
- the handler raised: the messages before it in the batch are committed; it is rewound
  and retried with backoff; after ``max_attempts`` it is dead-lettered. Later messages of
  its partition wait, so per-key order holds; no message blocks its partition forever.

Dead letters are acknowledged by Kafka before the offset moves past them; one the
dead-letter topic refuses is sent truncated (:mod:`consumers.dlq_writer`). No message,
however malformed, huge or deep, stops the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import TypeVar

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from consumers.batch import BatchApplier, Item
from consumers.clients import consumer_config, dead_letter_producer, measure_lag
from consumers.dlq import Failure
from consumers.dlq_writer import DeadLetterWriter
from consumers.errors import Rewind
from consumers.handlers import Handler, resolve
from consumers.health import ConsumerHealth, serve
from consumers.inbox import InboxStore, InboxUnusableError
from consumers.message import IncomingEvent, Received
from consumers.metrics import ConsumerMetrics
from consumers.options import ConsumerOptions, static_member_id
from consumers.routing import Routes, route
from outbox.errors import ConfigurationError, ServiceUnavailableError
from outbox.exit_codes import (
    EXIT_CONFIG,
    EXIT_ERROR,
    EXIT_FENCED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
)
from outbox.logs import message_fields
from outbox.preflight import check_database, check_kafka
from outbox.settings import Settings
from outbox.signals import drain_on_signals

log = logging.getLogger("outbox.consumer")
H = TypeVar("H", bound=Handler)


class _Fatal(Exception):  # noqa: N818 - control flow, never escapes the module
    """The Kafka consumer reported a fatal error: stop :meth:`Consumer.run`."""

    def __init__(self, message: str, fenced: bool) -> None:
        super().__init__(message)
        self.fenced = fenced


class Consumer:
    """An idempotent consumer group member.

    >>> app = Consumer(settings, group="inventory-service-group")
    >>> @app.handler("order-events", "OrderCreated")
    ... def reserve(session: Session, event: IncomingEvent) -> None: ...
    >>> app.run()
    """

    def __init__(self, settings: Settings, group: str, *, engine: Engine | None = None,
                 options: ConsumerOptions | None = None,
                 async_engine: AsyncEngine | None = None) -> None:
        self.settings = settings
        self.group = group
        self.options = options or ConsumerOptions()
        self.engine = engine or create_engine(settings.sqlalchemy_url(), pool_pre_ping=True,
                                              pool_size=2)
        self.inbox = InboxStore(settings)
        self.metrics = ConsumerMetrics()
        self.handlers: Routes = {}
        self.stopping = threading.Event()
        self.state = ConsumerHealth(self.options.stall_after)
        self.applier = BatchApplier(self.engine, self.inbox, group, self.options,
                                    self.metrics, self.state, settings)
        self.async_engine = async_engine  # made at run() if an async handler needs one
        self._runner: asyncio.Runner | None = None
        self.kafka: KafkaConsumer | None = None
        self.dead_letters: DeadLetterWriter | None = None
        self._last_lag = 0.0

    # ------------------------------------------------------------------ registration
    def handler(self, topic: str, event_type: str | None = None,
                model: type[BaseModel] | None = None) -> Callable[[H], H]:
        """Decorator: handle ``event_type`` on ``topic`` (``None``: any type, a fallback)."""

        def register(fn: H) -> H:
            self.add_handler(topic, event_type, fn, model)
            return fn

        return register

    def add_handler(self, topic: str, event_type: str | None, fn: Handler,
                    model: type[BaseModel] | None = None) -> None:
        """Register ``fn`` for ``event_type`` on ``topic``; ``model`` validates the payload.

        ``fn`` is a function or ``async def`` whose parameters ask by annotation for what
        it uses (:mod:`consumers.handlers`); a signature that cannot be served is a
        ``TypeError`` here, naming the handler and the parameter.
        """
        self.handlers[(topic, event_type)] = resolve(fn, model)

    @property
    def is_async(self) -> bool:
        """True if a handler is ``async def``: then every batch runs on the async engine."""
        return any(r.is_async for r in self.handlers.values())

    @property
    def topics(self) -> list[str]:
        """The topics this consumer subscribes to."""
        return sorted({topic for topic, _ in self.handlers})

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Finish the current batch, commit, leave the group, return from :meth:`run`."""
        self.stopping.set()

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
        """Serve ``http://host:port/metrics`` (Prometheus) and ``/health`` (200 or 503).

        ``port=0`` picks a free port: read it from the returned server's
        ``server_address``; ``shutdown()`` stops it.
        """
        return serve(self.metrics.registry, self.state.snapshot, port, host)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): started, the loop turns, the database answered its last
        batch, dead letters are acknowledged, and a Kafka broker is reachable."""
        return self.state.check()

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT finishes the current batch and stops; a second one exits at
        once (:func:`outbox.signals.drain_on_signals`)."""
        # The consumer's log actions predate the shared helper; they are documented.
        drain_on_signals(self.request_stop, log, "consumer", signal_action="consumer_stopping",
                         abort_action="consumer_kill")

    def run(self) -> int:
        """Consume until :meth:`request_stop`; returns a process exit code
        (:mod:`outbox.exit_codes`)."""
        if not self.handlers:
            raise ValueError("no handlers registered: add one with @consumer.handler(...)")
        self.state.phase = "starting: checking the database and Kafka"
        try:
            code = self._start_up_checks()
            if code is not None:
                return code
            if self.is_async:
                self._start_event_loop()
            try:
                self.dead_letters = DeadLetterWriter(
                    lambda: dead_letter_producer(self.settings, self.options), self.group,
                    self.applier.backoff, self.stopping, self.state, self.metrics)
                self.kafka = KafkaConsumer(consumer_config(
                    self.settings, self.options, self.group, self.topics, self.state))
            except (KafkaException, ValueError, TypeError) as exc:  # a refused property
                log.error("Kafka client configuration rejected: %s; check kafka_config / "
                          "OUTBOX_KAFKA_CONFIG", str(exc).splitlines()[0] if str(exc) else exc,
                          extra={"action": "config_error", "group": self.group})
                return EXIT_CONFIG
            self.kafka.subscribe(self.topics, on_revoke=self._on_revoke)
            log.info("consumer started", extra={"action": "consumer_start", "group": self.group,
                                                "topics": self.topics})
            self.state.phase = "consuming"
            self._loop()
        except InboxUnusableError as exc:
            # The inbox went away or its grants did while running: the batch in hand is
            # not committed (its messages come again once this is fixed), nothing of it
            # dead-lettered.
            log.error("%s", exc, extra={"action": "config_error", "group": self.group})
            return EXIT_CONFIG
        except _Fatal as exc:
            # librdkafka cannot go on with this consumer (e.g. fenced: another process
            # joined with the same group.instance.id); polling on would only repeat it.
            log.error("consumer stopped by a fatal Kafka error: %s", exc,
                      extra={"action": "consumer_fatal", "group": self.group})
            return EXIT_FENCED if exc.fenced else EXIT_ERROR
        finally:
            self.state.phase = "not running"
            self._close()
        return EXIT_OK

    def _start_up_checks(self) -> int | None:
        """Database and broker answer within ``startup_timeout``, or the exit code."""
        bound = self.options.startup_timeout
        if bound <= 0:
            return None
        try:
            if self.settings.database_url:
                check_database(self.settings, timeout=bound)
                if self.options.dedupe and (problem := self.inbox.problem(self.engine)):
                    raise ConfigurationError(problem)
            check_kafka(self.settings, timeout=bound)
        except ConfigurationError as exc:
            log.error("%s", exc, extra={"action": "config_error", "group": self.group})
            return EXIT_CONFIG
        except ServiceUnavailableError as exc:
            log.error("%s", exc, extra={"action": "startup_unavailable", "group": self.group})
            return EXIT_UNAVAILABLE
        return None

    def _loop(self) -> None:
        assert self.kafka is not None and self.dead_letters is not None
        while not self.stopping.is_set():
            self.state.last_loop = time.monotonic()
            if self.state.fatal is not None:
                raise self._fatal(self.state.fatal)
            # Wait for the first message only, then take what is already buffered:
            # consume(n, timeout) alone would wait for n messages or the full timeout,
            # adding up to poll_timeout of latency at every hop of a quiet saga.
            first = self.kafka.poll(self.options.poll_timeout)
            self.metrics.last_poll.set(time.time())
            self.dead_letters.poll()  # its log lines, while nothing is dead-lettered
            if first is None:
                continue
            messages = [first]
            if self.options.batch_size > 1:
                messages += self.kafka.consume(self.options.batch_size - 1, 0)
            batch = [m for m in messages if self._usable(m)]
            if batch:
                self.state.broker_reached()
                self._process(batch)
            self._measure_lag()

    def _start_event_loop(self) -> None:
        """An event loop owned by this thread, on which async batches are awaited; the async
        engine's connections belong to it, so it lives as long as the consumer runs."""
        if self.async_engine is None:
            self.async_engine = create_async_engine(self.settings.sqlalchemy_url(),
                                                    pool_pre_ping=True, pool_size=2)
        self.applier.use_async_engine(self.async_engine)
        self._runner = asyncio.Runner()

    def _fast(self, items: list[Item]) -> bool:
        if self._runner is None:
            return self.applier.fast(items)
        return self._runner.run(self.applier.fast_async(items))

    def _careful(self, items: list[Item]) -> tuple[int, tuple[Received, Failure] | None]:
        if self._runner is None:
            return self.applier.careful(items)
        return self._runner.run(self.applier.careful_async(items))

    def _close(self) -> None:
        if self._runner is not None:
            if self.async_engine is not None:
                self._runner.run(self.async_engine.dispose())
            self._runner.close()
            self._runner = None
        if self.dead_letters is not None:
            self.dead_letters.flush(self.options.shutdown_timeout)
        if self.kafka is not None:
            self.kafka.close()  # leaves the group, so its partitions move on at once
            self.kafka = None
        log.info("consumer stopped", extra={"action": "consumer_stopped", "group": self.group})

    def _measure_lag(self) -> None:
        now = time.monotonic()
        if self.kafka is not None and now - self._last_lag >= self.options.lag_interval:
            self._last_lag = now
            measure_lag(self.kafka, self.metrics)

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        # Offsets are committed synchronously after every batch, so nothing is owed here;
        # forget attempt counts of partitions that are no longer ours.
        gone = {(p.topic, p.partition) for p in partitions}
        for topic, partition in gone:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(topic, str(partition))
        self.applier.forget_partitions(gone)

    def _fatal(self, err: KafkaError) -> _Fatal:
        fenced = err.code() == KafkaError.FENCED_INSTANCE_ID or "fenced" in err.str().lower()
        return _Fatal(err.str() + (
            f" (another consumer of group {self.group!r} joined with instance id "
            f"{self.options.instance_id!r} and the same topics: two live processes must "
            "not share one)" if fenced else ""), fenced=fenced)

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        # A fatal error arrives once, as an event with code _FATAL whose text names the
        # cause; the consumer then stays silent forever.
        if err.fatal() or err.code() == KafkaError._FATAL:
            raise self._fatal(err)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err.str(), extra={"action": "kafka_error"})
        return False

    # ------------------------------------------------------------------ a batch
    def _process(self, batch: list[Message]) -> None:
        """Settle ``batch`` as far as it goes; what is left is consumed again later."""
        assert self.dead_letters is not None
        limit = self.options.max_message_bytes
        received = [Received.of(m) for m in batch]
        items: list[Item] = [(m, route(m, self.handlers, limit)) for m in received]
        try:
            if self._fast(items):
                self._commit(received)
                return
            while items and not self.stopping.is_set():
                applied, failed = self._careful(items)
                if applied:
                    self._commit([m for m, _ in items[:applied]])
                items = items[applied:]
                if failed is None:
                    continue
                msg, failure = failed
                if (failure.reason == "handler-failed"
                        and failure.attempts < self.options.max_attempts):
                    self.metrics.retries.inc()
                    delay = self.applier.backoff(failure.attempts)
                    log.warning("handler failed (attempt %d of %d), retrying in %.1fs: %s",
                                failure.attempts, self.options.max_attempts, delay,
                                failure.exception, extra={
                                    "action": "handler_retry", "topic": msg.topic,
                                    "partition": msg.partition, "offset": msg.offset,
                                    **message_fields(msg.headers, msg.key)})
                    raise Rewind(delay)  # what came before it is committed; come back to it
                self.dead_letters.send(msg, failure)
                self.applier.forget(msg)
                self._commit([msg])
                items = items[1:]
        except Rewind as rewind:
            self._rewind([m for m, _ in items])
            self.stopping.wait(rewind.delay)
            return
        if items:  # stopping: give the rest back
            self._rewind([m for m, _ in items])

    # ------------------------------------------------------------------ Kafka side
    def _commit(self, messages: list[Received]) -> None:
        """Commit offsets past ``messages`` (synchronously: the DB work is already durable)."""
        assert self.kafka is not None
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic, msg.partition)
            offsets[key] = max(offsets.get(key, -1), msg.offset + 1)
        try:
            self.kafka.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                              asynchronous=False)
        except KafkaException as exc:
            # E.g. the partition was revoked meanwhile: the new owner redelivers, the inbox
            # dedupes. Nothing is lost by not committing.
            log.warning("offset commit failed: %s", exc, extra={"action": "commit_failed"})

    def _rewind(self, messages: list[Received]) -> None:
        """Seek each partition back to its first unsettled message."""
        assert self.kafka is not None
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            first.setdefault((msg.topic, msg.partition), msg.offset)
        for (topic, partition), offset in first.items():
            # Not assigned to us any more: its new owner starts from the committed offset.
            with contextlib.suppress(KafkaException):
                self.kafka.seek(TopicPartition(topic, partition, offset))


__all__ = ["EXIT_ERROR", "EXIT_FENCED", "EXIT_INTERRUPTED", "EXIT_OK", "Consumer",
           "ConsumerOptions", "Handler", "IncomingEvent", "static_member_id"]
