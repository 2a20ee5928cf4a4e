"""Settling a batch whose delivery reports are all in: record what they mean.

relay.delivery.classify says which rows count as delivered; this writes it, in an order a
crash cannot turn into a loss: failures and holds first, then the progress that passes
them (a crash in between can only make the relay send rows again). Also the Kafka side
of the outcome: backoff after transient failures, health when deliveries succeed again.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError

from outbox.backoff import compute_backoff
from outbox.tracing import RelaySpans
from relay.connections import Connection
from relay.delivery import Batch, Outcome, attribute_failures, classify
from relay.failures import FailureLane
from relay.groups import Progress, ShardGroup
from relay.metrics import Health, RelayMetrics
from relay.queries import Queries
from relay.rows import AGGREGATEID, AGGREGATETYPE, ATTEMPTS, CREATED_MS, POSITION, SEQ, SHARD, Row
from relay.window import last_seqs, progress

log = logging.getLogger("outbox.relay")


class KafkaBackoff:
    """Whether Kafka takes deliveries, and until when the loop waits before producing."""

    def __init__(self, health: Health, metrics: RelayMetrics) -> None:
        self.health = health
        self.metrics = metrics
        self.failures = 0
        self.retry_at = 0.0

    def wait_at_least(self, seconds: float) -> None:
        self.retry_at = max(self.retry_at, time.monotonic() + seconds)

    def after_result(self, transient: list[str], delivered: bool) -> None:
        """A settled batch's transient failures (back off) or deliveries (recovered)."""
        if transient:
            self.metrics.delivery_errors.labels("transient").inc(len(transient))
            self.failures += 1
            self.health.kafka_ok = False
            delay = compute_backoff(self.failures)
            self.retry_at = time.monotonic() + delay
            log.warning("%d deliveries failed (%s), retrying in %.1fs", len(transient),
                        transient[0], delay,
                        extra={"action": "kafka_unavailable", "attempt": self.failures})
        elif delivered:
            if self.failures:
                log.info("Kafka deliveries succeed again", extra={"action": "kafka_recovered"})
            self.failures = 0
            self.health.kafka_ok = True

    def on_client_error(self, err: KafkaError) -> None:
        """librdkafka's error_cb: broker connection trouble; deliveries keep retrying."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.kafka_ok = False
        log.warning("Kafka client: %s", err.str(), extra={"action": "kafka_client_error"})


class Settler:
    """Records settled batches on the loop's session (the one holding the shard locks)."""

    def __init__(self, queries: Queries, metrics: RelayMetrics, groups: list[ShardGroup],
                 progress: Progress, failures: FailureLane, kafka: KafkaBackoff,
                 spans: RelaySpans) -> None:
        self.queries = queries
        self.metrics = metrics
        self.groups = groups
        self.progress = progress
        self.failures = failures
        self.kafka = kafka
        self.spans = spans

    def settle(self, conn: Connection, batch: Batch, group_shards: list[int]) -> int:
        """Record the batch's outcome; returns how many rows were delivered."""
        if batch.failed_reports:
            attribute_failures(batch)
        self.spans.settled(batch, len(batch.errors), batch.partitions or ())
        outcome = classify(batch)
        suspects = self.failures.suspects
        for row in outcome.suspects:  # maybe a neighbour's fault: retried alone, uncounted
            suspects.add(row[SEQ])
            self.kafka.wait_at_least(compute_backoff(1))
        failed = dict(outcome.heads)  # aggregate -> its failed row is parked
        for row, message in outcome.failures:
            failed[(row[AGGREGATETYPE], row[AGGREGATEID])] = self._record_failure(
                conn, row, message)
        delivered = outcome.delivered
        # commit (created_at) -> acknowledged, as seen when the batch settles
        self.metrics.latency.observe_ages(time.time(), [row[CREATED_MS] for row in delivered])
        # (seqs only needed to clear suspects and to mark rows of the retry claim)
        seqs = [row[SEQ] for row in delivered] if suspects or not batch.fast_path else []
        if suspects:
            suspects.difference_update(seqs)
        if batch.fast_path:
            self._settle_window(conn, batch, outcome, failed)
        else:
            if seqs:
                conn.execute(self.queries.mark_published, {"seqs": seqs})
            if failed:
                self.groups[batch.group].retry_due = True
            self.failures.load(conn, group_shards)
        self.metrics.published.inc(len(delivered))
        self.kafka.after_result(outcome.transient_messages, bool(delivered))
        return len(delivered)

    def hold(self, conn: Connection, park: list[int], wait: list[int]) -> None:
        """relay.failures.FailureLane.hold; rows taken off the fast path are retried."""
        self.failures.hold(conn, park, wait)
        if wait:  # the retry claim finds them
            for group in self.groups:
                group.retry_due = True

    def _settle_window(self, conn: Connection, batch: Batch, outcome: Outcome,
                       failed: dict[tuple[str, str], bool]) -> None:
        """Followers of failed rows leave the fast path; the window's progress moves up to
        the first row to read again (all of it when there is none)."""
        reread = outcome.reread  # a position in the window's stream order (relay.window)
        park = [r[SEQ] for r in outcome.followers if failed[(r[AGGREGATETYPE], r[AGGREGATEID])]]
        wait = [r[SEQ] for r in outcome.followers
                if not failed[(r[AGGREGATETYPE], r[AGGREGATEID])]
                and (reread is None or POSITION(r) < reread)]
        self.hold(conn, park, wait)
        group = self.groups[batch.group]
        window = group.window
        assert window is not None
        settled = (batch.read if reread is None
                   else [r for r in batch.read if POSITION(r) < reread])
        complete = batch.completes_window = reread is None and batch.ends_window
        self.progress.moved(progress(self.progress.cursors, window, last_seqs(settled),
                                     complete))
        if complete or reread is not None:
            group.close_window()

    def _record_failure(self, conn: Connection, row: Row, message: str) -> bool:
        parked = self.failures.record(conn, row, message)
        if not parked:
            # Retry the row after a pause rather than at once: it just failed for good reason.
            self.groups[row[SHARD] % len(self.groups)].retry_due = True
            self.kafka.wait_at_least(compute_backoff(row[ATTEMPTS] + 1))
        return parked
