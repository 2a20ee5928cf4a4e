"""Writing dead letters: produce, wait for Kafka's acknowledgement, never give up on one.

A letter goes down a ladder (:mod:`consumers.dlq`): the original record with diagnostics;
if the dead-letter topic or the producer refuses it for what it is (too large, headers that
cannot be read or written), the truncated letter; then the bare one. Anything else — no
acknowledgement in time, the broker unreachable, the topic missing or not writable — is an
outage: the same letter is retried with backoff until it is acknowledged, with ``/health``
saying so, or until the consumer stops (:class:`~consumers.errors.Rewind`: the message is
consumed again after the restart). The consumer never crashes on a dead letter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumers.dlq import DeadLetter, Failure, bare_letter, describe, full_letter, truncated_letter
from consumers.errors import Rewind
from consumers.health import ConsumerHealth
from consumers.message import Received
from consumers.metrics import ConsumerMetrics
from outbox.logs import message_fields

log = logging.getLogger("outbox.consumer")

# The record itself is the problem: sending it again cannot help, a smaller one may.
REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                     KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
                     KafkaError._INVALID_ARG, KafkaError._INVALID_TYPE, KafkaError._BAD_MSG})
DELIVERY_TIMEOUT_MS = 30_000  # the producer's message.timeout.ms: a definite answer in time

Builder = Callable[[Received, str, Failure], DeadLetter]
_Headers = list[tuple[str, str | bytes | None]]  # what Producer.produce is typed to take


class DeadLetterWriter:
    """Sends dead letters for one consumer group with its own producer."""

    def __init__(self, make_producer: Callable[[], Producer], group: str,
                 backoff: Callable[[int], float], stopping: threading.Event,
                 health: ConsumerHealth, metrics: ConsumerMetrics) -> None:
        self.make_producer = make_producer
        self.producer = make_producer()
        self.group = group
        self.backoff = backoff
        self.stopping = stopping
        self.health = health
        self.metrics = metrics

    def send(self, msg: Received, failure: Failure) -> DeadLetter:
        """Dead-letter ``msg``; returns once Kafka acknowledged it (the letter written)."""
        rungs: list[Builder] = [truncated_letter]
        if failure.reason != "too-large":
            rungs.insert(0, full_letter)
        for build in rungs:
            try:
                letter = build(msg, self.group, failure)
            except Exception as exc:  # e.g. headers that cannot be read: the next rung
                log.warning("dead letter of %s[%s]@%s cannot be built whole (%s): %s",
                            msg.topic, msg.partition, msg.offset, build.__name__,
                            describe(exc), extra={"action": "dlq_truncated",
                                                  **message_fields(msg.headers, msg.key)})
                continue
            refusal = self._deliver(letter, refused_is_outage=False)
            if refusal is None:
                return self._sent(msg, failure, letter)
            log.warning("%s refused the dead letter of %s[%s]@%s (%s): sending less of it",
                        letter.topic, msg.topic, msg.partition, msg.offset, refusal,
                        extra={"action": "dlq_truncated", **message_fields(msg.headers, msg.key)})
        # Our own diagnostics only: it cannot fail to build; refused, it is an outage.
        letter = bare_letter(msg, self.group, failure)
        self._deliver(letter, refused_is_outage=True)
        return self._sent(msg, failure, letter)

    def _sent(self, msg: Received, failure: Failure, letter: DeadLetter) -> DeadLetter:
        self.metrics.dead_lettered.labels(reason=failure.reason).inc()
        log.error("dead-lettered %s[%d]@%d: %s: %s", msg.topic, msg.partition, msg.offset,
                  failure.reason, describe(failure.exception),
                  extra={"action": "dead_lettered", "reason": failure.reason,
                         "attempts": failure.attempts, "truncated": ",".join(letter.cut),
                         **message_fields(msg.headers, msg.key)})
        return letter

    def flush(self, timeout: float) -> int:
        """Wait for letters still in flight (at shutdown); returns how many are left."""
        return int(self.producer.flush(timeout))

    def poll(self) -> None:
        """Serve the producer's callbacks (its log lines) without blocking."""
        self.producer.poll(0)

    def _deliver(self, letter: DeadLetter, refused_is_outage: bool) -> str | None:
        """Produce ``letter`` until acknowledged (None) or refused (the reason)."""
        attempt = 0
        while True:
            kind, detail = self._produce_once(letter)
            if kind == "ok":
                self.health.dead_letter_problem = None
                return None
            if kind == "refused" and not refused_is_outage:
                return detail
            attempt += 1
            delay = self.backoff(attempt)
            self.health.dead_letter_problem = f"{letter.topic}: {detail}"
            log.error("dead letter to %s not acknowledged (%s); retrying in %.1fs",
                      letter.topic, detail, delay, extra={"action": "dlq_retry"})
            if self.stopping.wait(delay):
                raise Rewind(0)

    def _produce_once(self, letter: DeadLetter) -> tuple[str, str]:
        """("ok" | "refused" | "outage", detail) of one produce and its delivery report."""
        reports: list[KafkaError | None] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            reports.append(err)

        try:
            self.producer.produce(letter.topic, key=letter.key, value=letter.value,
                                  headers=cast(_Headers, letter.headers),
                                  on_delivery=on_delivery)
        except BufferError:
            self.producer.poll(1)  # the queue drains; produce again
            return "outage", "producer queue full"
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError):
                return self._classify(error)
            return "outage", describe(exc)
        except (TypeError, ValueError) as exc:  # the client cannot write these headers
            return "refused", describe(exc)
        # Wait for this letter's report; message.timeout.ms guarantees one comes.
        waited = 0
        while not reports and waited < DELIVERY_TIMEOUT_MS / 1000 + 5:
            if self.stopping.is_set():
                return "outage", "stopping"
            self.producer.flush(1)
            waited += 1
        if not reports:
            return "outage", "no acknowledgement in time"
        return self._classify(reports[0])

    def _classify(self, err: KafkaError | None) -> tuple[str, str]:
        if err is None:
            return "ok", ""
        if err.fatal():
            # An idempotent producer in a fatal state refuses everything: start a new one.
            log.error("dead-letter producer failed for good (%s): starting a new one",
                      err.str(), extra={"action": "dlq_producer_reset"})
            self.producer = self.make_producer()
            return "outage", err.str()
        return ("refused" if err.code() in REFUSED else "outage"), err.str()
