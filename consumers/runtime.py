"""The idempotent consumer: handlers per topic and event type, exactly-once effects.

For each batch of messages, in **one** database transaction, the inbox rows
(group, event id) of the whole batch are inserted in one statement and the handlers of
the new ones run with the same session — so each handler's writes and any events it
``publish()``-es commit together with the inbox rows, or not at all. Kafka offsets are
committed only after that commit. A crash in between redelivers the batch; the inbox
rows make the redelivery a no-op.

If anything in the batch is not plain sailing (poison, a payload model, a handler that
raises), the batch is rolled back and applied again on the careful path: a savepoint per
message, so one failure is isolated and everything before it is committed. Handlers may
therefore run more than once before their effect commits; their effects outside the
transaction (a payment gateway call) must be idempotent, keyed by something stable.

Failures, in order of what they mean:

- the database is unreachable: not the message's fault. The batch is rewound (seek) and
  retried after a backoff, forever, without counting attempts.
- the message is poison (see :mod:`consumers.message`), has an unknown event type with no
  fallback handler, or fails its payload model: dead-lettered at once.
- the handler raised: the messages before it in the batch are committed; it is rewound
  and retried with backoff; after ``max_attempts`` it is dead-lettered. Later messages of
  its partition wait, so per-key order holds; no message blocks its partition forever.

Dead letters are acknowledged by Kafka before the offset moves past them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from types import FrameType

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from consumers.dlq import Failure, dead_letter_headers, dlq_topic
from consumers.errors import is_connection_lost, is_transient
from consumers.health import serve
from consumers.inbox import InboxStore
from consumers.message import IncomingEvent, PoisonMessageError, decode
from consumers.metrics import ConsumerMetrics
from outbox.backoff import compute_backoff
from outbox.settings import Settings

log = logging.getLogger("outbox.consumer")

Handler = Callable[[Session, IncomingEvent], None]
Position = tuple[str, int, int]  # topic, partition, offset

EXIT_OK = 0
EXIT_ERROR = 1  # a fatal Kafka error other than fencing
EXIT_FENCED = 5  # another process joined the group with this instance_id
EXIT_INTERRUPTED = 130


@dataclass
class Registration:
    """A handler and the payload model it validates against (if any)."""

    handler: Handler
    model: type[BaseModel] | None = None


@dataclass
class ConsumerOptions:
    """Tuning; every field has a sensible default."""

    max_attempts: int = 5
    batch_size: int = 200
    poll_timeout: float = 0.5
    dedupe: bool = True
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    shutdown_timeout: float = 30.0
    lag_interval: float = 5.0  # seconds between lag measurements (cached watermarks)
    stall_after: float = 60.0  # /health turns 503 when the loop has not turned for this long
    # A stable id of this instance (Kafka static membership, ``group.instance.id``): after a
    # crash, the instance restarted with the same id takes its partitions back at once
    # instead of after session.timeout.ms. Two live processes must never share one (the
    # later fences the earlier, which then exits with EXIT_FENCED). Each id must be unique
    # in the group, e.g. a StatefulSet pod name. See static_member_id for the suffix.
    instance_id: str | None = None
    kafka_config: dict[str, str] = field(default_factory=dict)


def static_member_id(instance_id: str, topics: list[str]) -> str:
    """``group.instance.id`` for ``instance_id`` subscribed to ``topics``: the id with a
    short hash of the topics. Kafka hands a static member that comes back its previous
    assignment without a rebalance; one that came back subscribed to other topics would
    never be given them (measured: a new topic not consumed after 90 s). A new set of
    topics is a new member instead, which joins with a rebalance."""
    digest = zlib.crc32(",".join(sorted(topics)).encode()) & 0xFFFFFF
    return f"{instance_id}.{digest:06x}"


class _Fatal(Exception):  # noqa: N818 - control flow, never escapes the module
    """The Kafka consumer reported a fatal error: stop :meth:`Consumer.run`."""

    def __init__(self, message: str, fenced: bool) -> None:
        super().__init__(message)
        self.fenced = fenced


class _Rewind(Exception):  # noqa: N818 - control flow, never escapes the module
    """Stop this batch: nothing of it was settled; consume it again after ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


class Consumer:
    """An idempotent consumer group member.

    >>> app = Consumer(settings, group="inventory-service-group")
    >>> @app.handler("order-events", "OrderCreated")
    ... def reserve(session: Session, event: IncomingEvent) -> None: ...
    >>> app.run()
    """

    def __init__(self, settings: Settings, group: str, *, engine: Engine | None = None,
                 options: ConsumerOptions | None = None) -> None:
        self.settings = settings
        self.group = group
        self.options = options or ConsumerOptions()
        self.engine = engine or create_engine(settings.sqlalchemy_url(), pool_pre_ping=True,
                                              pool_size=2)
        self.inbox = InboxStore(settings)
        self.metrics = ConsumerMetrics()
        self.handlers: dict[tuple[str, str | None], Registration] = {}
        self.attempts: dict[Position, int] = {}
        self.stopping = threading.Event()
        self.kafka: KafkaConsumer | None = None
        self.producer: Producer | None = None
        self.db_failures = 0
        self.commit_failures = 0
        self._signals = 0
        self._running = False
        self._last_loop = 0.0
        self._last_lag = 0.0

    # ------------------------------------------------------------------ registration
    def handler(self, topic: str, event_type: str | None = None,
                model: type[BaseModel] | None = None) -> Callable[[Handler], Handler]:
        """Decorator: handle ``event_type`` on ``topic`` (``None``: any type, a fallback)."""

        def register(fn: Handler) -> Handler:
            self.add_handler(topic, event_type, fn, model)
            return fn

        return register

    def add_handler(self, topic: str, event_type: str | None, fn: Handler,
                    model: type[BaseModel] | None = None) -> None:
        """Register ``fn`` for ``event_type`` on ``topic``; ``model`` validates the payload."""
        self.handlers[(topic, event_type)] = Registration(fn, model)

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
        return serve(self.metrics.registry, self.health, port, host)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): the loop turns, and the database answered its last batch."""
        if not self._running:
            return False, "not running"
        idle = time.monotonic() - self._last_loop
        if idle > self.options.stall_after:
            return False, f"consume loop stalled for {idle:.0f}s"
        if self.db_failures:
            return False, f"database unavailable ({self.db_failures} failed attempts)"
        return True, "consuming"

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT drains; a second one exits at once."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second signal: exiting now", extra={"action": "consumer_kill"})
                os._exit(EXIT_INTERRUPTED)
            log.info("signal %d: finishing the current batch", signum,
                     extra={"action": "consumer_stopping"})
            self.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run(self) -> int:
        """Consume until :meth:`request_stop`; returns a process exit code."""
        if not self.handlers:
            raise ValueError("no handlers registered: add one with @consumer.handler(...)")
        self.kafka = KafkaConsumer({
            "bootstrap.servers": self.settings.kafka_bootstrap_servers,
            **self.settings.kafka_config,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            **({"group.instance.id": static_member_id(self.options.instance_id, self.topics)}
               if self.options.instance_id else {}),
            **self.options.kafka_config,
        })
        self.producer = Producer({
            **self.settings.producer_config(), "enable.idempotence": True, "acks": "all",
            "partitioner": "murmur2_random", "linger.ms": 1})
        self.kafka.subscribe(self.topics, on_revoke=self._on_revoke)
        log.info("consumer started", extra={"action": "consumer_start", "group": self.group,
                                            "topics": self.topics})
        self._running = True
        try:
            while not self.stopping.is_set():
                self._last_loop = time.monotonic()
                # Wait for the first message only, then take what is already buffered:
                # consume(n, timeout) alone would wait for n messages or the full timeout,
                # adding up to poll_timeout of latency at every hop of a quiet saga.
                first = self.kafka.poll(self.options.poll_timeout)
                if first is None:
                    continue
                messages = [first]
                if self.options.batch_size > 1:
                    messages += self.kafka.consume(self.options.batch_size - 1, 0)
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    self._process(batch)
                self._measure_lag()
        except _Fatal as exc:
            # librdkafka cannot go on with this consumer (e.g. fenced: another process
            # joined with the same group.instance.id); polling on would only repeat it.
            log.error("consumer stopped by a fatal Kafka error: %s", exc,
                      extra={"action": "consumer_fatal", "group": self.group})
            return EXIT_FENCED if exc.fenced else EXIT_ERROR
        finally:
            self._running = False
            self._close()
        return EXIT_OK

    def _close(self) -> None:
        if self.producer is not None:
            self.producer.flush(self.options.shutdown_timeout)
        if self.kafka is not None:
            self.kafka.close()  # leaves the group, so its partitions move on at once
            self.kafka = None
        log.info("consumer stopped", extra={"action": "consumer_stopped", "group": self.group})

    def _measure_lag(self) -> None:
        """Feed the lag gauge: high watermark minus our position, per assigned partition."""
        now = time.monotonic()
        if self.kafka is None or now - self._last_lag < self.options.lag_interval:
            return
        self._last_lag = now
        try:
            assigned = self.kafka.assignment()
            for tp in self.kafka.position(assigned) if assigned else []:
                # The high watermark librdkafka keeps from fetch responses: asking the broker
                # instead costs a round trip per partition, in this loop, stalling every hop
                # of a saga each lag_interval (bench/saga.py: p99 +100-300 ms every 5 s).
                _low, high = self.kafka.get_watermark_offsets(tp, cached=True)
                # Position is negative (OFFSET_INVALID) before the first fetch: no lag known.
                if tp.offset >= 0:
                    self.metrics.lag.labels(tp.topic, str(tp.partition)).set(
                        max(high - tp.offset, 0))
        except KafkaException as exc:
            # Lag is for the dashboard; a broker hiccup must not disturb consuming.
            log.debug("lag measurement failed: %s", exc, extra={"action": "lag_failed"})

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        # Offsets are committed synchronously after every batch, so nothing is owed here;
        # forget attempt counts of partitions that are no longer ours.
        gone = {(p.topic, p.partition) for p in partitions}
        for topic, partition in gone:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(topic, str(partition))
        self.attempts = {k: v for k, v in self.attempts.items() if (k[0], k[1]) not in gone}

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        # A fatal error arrives once, as an event with code _FATAL whose text names the
        # cause; the consumer then stays silent forever.
        if err.fatal() or err.code() == KafkaError._FATAL:
            fenced = (err.code() == KafkaError.FENCED_INSTANCE_ID
                      or "fenced" in err.str().lower())
            raise _Fatal(err.str() + (
                f" (another consumer of group {self.group!r} joined with instance id "
                f"{self.options.instance_id!r} and the same topics: two live processes must "
                "not share one)"
                if fenced else ""), fenced=fenced)
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer error: %s", err.str(), extra={"action": "kafka_error"})
        return False

    # ------------------------------------------------------------------ a batch
    def _process(self, batch: list[Message]) -> None:
        remaining = batch
        try:
            if self._apply_fast(batch):
                return
        except _Rewind as rewind:
            self._rewind(batch)
            self.stopping.wait(rewind.delay)
            return
        while remaining and not self.stopping.is_set():
            try:
                settled, retry_in = self._apply(remaining)
            except _Rewind as rewind:
                settled, retry_in = 0, rewind.delay
            remaining = remaining[settled:]
            if retry_in is not None:
                self._rewind(remaining)
                self.stopping.wait(retry_in)
                return
        if remaining:  # stopping: give the rest back
            self._rewind(remaining)

    def _backoff(self, attempt: int) -> float:
        return compute_backoff(attempt, base=self.options.backoff_base,
                               cap=self.options.backoff_cap)

    def _database_lost(self, exc: Exception) -> _Rewind:
        """Count the outage and say how long to wait; the batch is consumed again later."""
        self.db_failures += 1
        delay = self._backoff(self.db_failures)
        log.warning("database unavailable, retrying in %.1fs: %s", delay,
                    str(exc).splitlines()[0], extra={"action": "db_unavailable"})
        return _Rewind(delay)

    def _apply_fast(self, batch: list[Message]) -> bool:
        """The common case in few round trips: one inbox insert for the whole batch, then
        the handlers, with no savepoint per message; one commit.

        Returns False (having changed nothing) when the batch holds a message that needs
        the careful path: poison, an unknown type, a payload failing its model, or a
        handler that raised — the careful path then isolates it with savepoints.
        """
        events: list[tuple[IncomingEvent, Registration]] = []
        for msg in batch:
            try:
                event = decode(msg)
            except PoisonMessageError:
                return False
            registration = (self.handlers.get((event.topic, event.type))
                            or self.handlers.get((event.topic, None)))
            if registration is None or registration.model is not None:
                return False  # validation and unknown types are decided one by one
            events.append((event, registration))
        started = time.perf_counter()
        handled = duplicates = 0
        try:
            with Session(self.engine) as session, session.begin():
                fresh = (self.inbox.claim_many(session, self.group, [e for e, _ in events])
                         if self.options.dedupe else {e.id for e, _ in events})
                for event, registration in events:
                    if event.id not in fresh:
                        duplicates += 1
                        continue
                    if self.options.dedupe:
                        fresh.discard(event.id)  # the same id twice in one batch: apply once
                    registration.handler(session, event)
                    handled += 1
                _crash_after_commit_hook(session)
        except Exception as exc:
            if is_connection_lost(exc):
                raise self._database_lost(exc) from exc
            return False  # rolled back as a whole; the careful path finds the culprit
        self.db_failures = 0
        self.metrics.handled.inc(handled)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self._commit(batch)
        return True

    def _apply(self, batch: list[Message]) -> tuple[int, float | None]:
        """Apply a prefix of ``batch`` in one transaction.

        Returns how many messages were settled and, if the next one must be retried later,
        after how long. Stops at the first message that fails: everything before it is
        committed (and its offsets); the failing one is dead-lettered (settled) or retried.
        """
        applied = 0
        failed: tuple[Message, Failure] | None = None
        started = time.perf_counter()
        try:
            with Session(self.engine) as session, session.begin():
                for msg in batch:
                    failure = self._apply_one(session, msg)
                    if failure is not None:
                        failed = (msg, failure)
                        break
                    applied += 1
                if applied:
                    _crash_after_commit_hook(session)
        except Exception as exc:
            if is_connection_lost(exc):
                raise self._database_lost(exc) from exc
            # The commit itself failed (a serialization failure, a deferred constraint):
            # nothing of the batch is durable and no single message can be blamed, so the
            # whole batch is rewound and retried after a backoff rather than crashing the
            # consumer into a restart loop.
            self.commit_failures += 1
            delay = self._backoff(self.commit_failures)
            log.error("batch commit failed (%s), retrying in %.1fs: %s",
                      "transient" if is_transient(exc) else type(exc).__name__, delay,
                      str(exc).splitlines()[0] if str(exc) else "",
                      extra={"action": "batch_commit_failed"})
            raise _Rewind(delay) from exc
        self.commit_failures = 0
        self.db_failures = 0
        if applied:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            self._commit(batch[:applied])
        if failed is None:
            return applied, None
        msg, failure = failed
        position = _position(msg)
        if failure.reason == "handler-failed" and failure.attempts < self.options.max_attempts:
            self.metrics.retries.inc()
            delay = self._backoff(failure.attempts)
            log.warning("handler failed (attempt %d of %d), retrying in %.1fs: %s",
                        failure.attempts, self.options.max_attempts, delay, failure.exception,
                        extra={"action": "handler_retry", "topic": position[0],
                               "partition": position[1], "offset": position[2]})
            return applied, delay  # what came before it is committed; come back to it
        self._dead_letter(msg, failure)
        self.attempts.pop(position, None)
        self._commit([msg])
        return applied + 1, None

    def _apply_one(self, session: Session, msg: Message) -> Failure | None:
        position = _position(msg)
        try:
            event = decode(msg)
            registration = (self.handlers.get((event.topic, event.type))
                            or self.handlers.get((event.topic, None)))
            if registration is None:
                raise PoisonMessageError("unknown-event-type",
                                         f"no handler for event type {event.type!r} on "
                                         f"{event.topic!r} and no fallback handler")
            if registration.model is not None:
                try:
                    registration.model.model_validate(event.payload)
                except ValidationError as exc:
                    raise PoisonMessageError("invalid-payload", str(exc)) from None
        except PoisonMessageError as poison:
            return Failure(poison.reason, poison, self.attempts.get(position, 0) + 1)
        started = time.perf_counter()
        try:
            with session.begin_nested():
                if self.options.dedupe and not self.inbox.claim(session, self.group, event):
                    self.metrics.duplicates.inc()
                    return None
                registration.handler(session, event)
        except Exception as exc:
            if is_connection_lost(exc):
                raise
            attempts = self.attempts.get(position, 0) + 1
            self.attempts[position] = attempts
            return Failure("handler-failed", exc, attempts)
        self.metrics.handled.inc()
        self.metrics.handler_seconds.observe(time.perf_counter() - started)
        self.attempts.pop(position, None)
        return None

    # ------------------------------------------------------------------ Kafka side
    def _commit(self, messages: list[Message]) -> None:
        """Commit offsets past ``messages`` (synchronously: the DB work is already durable)."""
        assert self.kafka is not None
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            offsets[key] = max(offsets.get(key, -1), (msg.offset() or 0) + 1)
        try:
            self.kafka.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                              asynchronous=False)
        except KafkaException as exc:
            # E.g. the partition was revoked meanwhile: the new owner redelivers, the inbox
            # dedupes. Nothing is lost by not committing.
            log.warning("offset commit failed: %s", exc, extra={"action": "commit_failed"})

    def _rewind(self, messages: list[Message]) -> None:
        """Seek each partition back to its first unsettled message."""
        assert self.kafka is not None
        first: dict[tuple[str, int], int] = {}
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            first.setdefault(key, msg.offset() or 0)
        for (topic, partition), offset in first.items():
            # Not assigned to us any more: its new owner starts from the committed offset.
            with contextlib.suppress(KafkaException):
                self.kafka.seek(TopicPartition(topic, partition, offset))

    def _dead_letter(self, msg: Message, failure: Failure) -> None:
        """Produce ``msg`` to its dead-letter topic and wait for the acknowledgement."""
        assert self.producer is not None
        topic = dlq_topic(msg.topic() or "")
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())

        for attempt in _forever():
            errors.clear()
            self.producer.produce(topic, key=msg.key(), value=msg.value(),
                                  headers=list(dead_letter_headers(msg, self.group, failure)),
                                  on_delivery=on_delivery)
            remaining = self.producer.flush(30)
            if not remaining and not errors:
                break
            delay = self._backoff(attempt)
            log.error("dead letter to %s not acknowledged (%s); retrying in %.1fs", topic,
                      errors or "timeout", delay, extra={"action": "dlq_retry"})
            if self.stopping.wait(delay):
                raise _Rewind(0)
        self.metrics.dead_lettered.labels(reason=failure.reason).inc()
        log.error("dead-lettered %s[%d]@%d: %s: %s", msg.topic(), msg.partition(), msg.offset(),
                  failure.reason, failure.exception,
                  extra={"action": "dead_lettered", "reason": failure.reason,
                         "attempts": failure.attempts})


def _crash_after_commit_hook(session: Session) -> None:
    """Test hook (OUTBOX_TEST_CRASH_AFTER_DB_COMMIT): commit, then die before the offset."""
    if os.environ.get("OUTBOX_TEST_CRASH_AFTER_DB_COMMIT"):
        session.commit()
        os.kill(os.getpid(), signal.SIGKILL)


def _position(msg: Message) -> Position:
    return (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


def _forever() -> Iterator[int]:
    n = 1
    while True:
        yield n
        n += 1


__all__ = ["Consumer", "ConsumerOptions", "Handler", "IncomingEvent"]
