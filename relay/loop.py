"""The relay loop: claim pending rows of owned shards, produce them, mark them published.

Pipelining: the owned shards are split into ``pipeline_depth`` groups (``shard % depth``).
At most one batch per group is in flight, so while Kafka acknowledges group 0's batch the
loop claims and produces group 1's. A shard is never in two batches at once, which is what
makes it safe to claim again before the previous batch is marked: the claim of a group only
runs after that group's last batch was settled, so it can never return a row that is still
in flight, nor a row that would overtake an earlier one of its aggregate.

Settling a batch (all delivery reports in): per aggregate, rows up to the first failed one
are marked published in one ``UPDATE``; from the first failed row on, nothing of that
aggregate is marked, so the next claim retries from the earliest failed row (later rows
that Kafka did accept are sent again: duplicates, never a gap or an overtaking).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from outbox.backoff import compute_backoff
from outbox.record import StoredRow, invalid_topic_reason, stored_record_parts, topic_for
from outbox.settings import Settings
from relay.marker import Marker
from relay.metrics import Health, RelayMetrics
from relay.producer import is_permanent, make_producer, producer_config
from relay.queries import Queries
from relay.shards import ShardOwnership

log = logging.getLogger("outbox.relay")

# Process exit codes, so a supervisor can tell a clean stop from a problem.
EXIT_OK = 0
EXIT_ERROR = 1  # unexpected exception
EXIT_CONFIG = 3  # configuration rejected at start
EXIT_SHUTDOWN_INCOMPLETE = 4  # stopped with deliveries still unconfirmed (will be re-sent)
EXIT_INTERRUPTED = 130  # second signal: stopped at once

# StoredRow's 9 columns (payload as jsonb text, created_at as epoch ms), then seq, shard,
# attempts: see queries.ROW_COLUMNS
Row = tuple[str, str, str, str, str | None, int, str | None, str | None, str | None, int, int,
            int]
AggregateKey = tuple[str, str]
Headers = list[tuple[str, str | bytes | None]]
AckHook = Callable[[str, float], None]


@dataclass
class RelayOptions:
    """How the relay runs; every field has a CLI flag on ``outbox relay run``."""

    batch_size: int = 2000
    poll_interval: float = 1.0
    listen: bool = True
    pipeline_depth: int = 2
    max_attempts: int = 5
    rebalance_interval: float = 2.0
    stats_interval: float = 5.0
    shutdown_timeout: float = 30.0
    # None: keep published rows (purge them with `outbox purge`); 0: delete each row as soon
    # as Kafka acknowledged it (fastest, nothing left to replay); > 0: purge in the daemon.
    retention_seconds: float | None = None
    purge_interval: float = 60.0
    purge_batch: int = 1000
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class Batch:
    """Rows of one shard group produced together, and what Kafka said about each."""

    group: int
    rows: list[Row]
    outstanding: int = 0
    # row index -> (permanent?, message); a failed produce() or a failed delivery
    errors: dict[int, tuple[bool, str]] = field(default_factory=dict)
    # indexes of rows produced alone (see Relay.suspects), so their errors are their own
    isolated: set[int] = field(default_factory=set)
    fatal: bool = False
    # set once the delivery reports are in and the mark UPDATE was handed to the Marker
    marking: Future[int] | None = None
    marked_count: int = 0


class Relay:
    """One relay instance. ``run()`` blocks until ``request_stop()``; returns an exit code."""

    def __init__(self, settings: Settings, options: RelayOptions | None = None,
                 on_ack: AckHook | None = None) -> None:
        self.settings = settings
        self.options = options or RelayOptions()
        self.queries = Queries.for_settings(settings)
        self.metrics = RelayMetrics()
        self.health = Health()
        self.on_ack = on_ack
        self.shards = ShardOwnership(self.queries)
        depth = max(1, self.options.pipeline_depth)
        self.depth = depth
        self.in_flight: list[Batch | None] = [None] * depth
        # Small batches whose deliveries are all acknowledged and whose mark UPDATE is still
        # running: their group may already claim again (see _settle_completed).
        self.marking: list[Batch] = []
        self.dirty = [True] * depth
        # whether the group's last claim came back full (a backlog: use the LATERAL claim)
        self.backlogged = [True] * depth
        # aggregate -> (seq of its first parked row, shard): later rows are held back.
        self.blocked: dict[AggregateKey, tuple[int, int]] = {}
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.producer: Producer | None = None
        self.wake = threading.Event()
        # seqs whose delivery failed with a permanent error while sharing a produce request
        # with other records: the broker rejects a whole record batch (e.g. one record over
        # the topic's max.message.bytes), so the error may belong to a neighbour. Such a row
        # is retried alone before any attempt is counted against it.
        self.suspects: set[int] = set()
        # One marking connection per shard group: the groups' updates never share a row.
        self.marker = Marker(settings, self.queries, self.options.instance_id,
                             workers=depth, delete=self.options.retention_seconds == 0)
        self.stopping = threading.Event()
        self.kafka_failures = 0
        self.kafka_retry_at = 0.0
        self.rotation = 0
        self.template = settings.topic_template
        # aggregatetype -> (topic, why Kafka would refuse that name or None)
        self.topics: dict[str, tuple[str, str | None]] = {}
        self.first_claim_at: float | None = None
        self.last_ack_at: float | None = None
        self.published_total = 0

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Finish in-flight deliveries, mark them, release the shards, return from run()."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        """The daemon: loop until asked to stop, surviving PostgreSQL and Kafka outages."""
        opts = self.options
        log.info("relay starting", extra={
            "action": "relay_start", "instance": opts.instance_id,
            "table": self.queries.qualified, "batch_size": opts.batch_size,
            "listen": opts.listen, "poll_interval": opts.poll_interval})
        if opts.listen:
            threading.Thread(target=self._listen, name="relay-listen", daemon=True).start()
        if opts.retention_seconds:  # 0 deletes rows on delivery: nothing to purge
            threading.Thread(target=self._purge_loop, name="relay-purge", daemon=True).start()
        db_failures = 0
        while not self.stopping.is_set():
            try:
                if self.conn is None:
                    self._connect()
                if self.producer is None:
                    try:
                        self.producer = make_producer(producer_config(
                            self.settings.producer_config(),
                            f"outbox-relay-{opts.instance_id}"), error_cb=self._on_client_error)
                    except KafkaException as exc:
                        log.error("the Kafka producer configuration was rejected: %s; check "
                                  "OUTBOX_KAFKA_CONFIG / --kafka-config", exc.args[0].str(),
                                  extra={"action": "config_error"})
                        self._lose_connection()
                        return EXIT_CONFIG
                self._tick()
                db_failures = 0
            except psycopg.OperationalError as exc:
                db_failures += 1
                self.health.database_ok = False
                self.health.detail = f"database: {first_line(exc)}"
                delay = compute_backoff(db_failures)
                log.warning("database unavailable, retrying in %.1fs: %s", delay,
                            first_line(exc), extra={"action": "db_unavailable",
                                                    "attempt": db_failures})
                self._lose_connection()
                self.stopping.wait(delay)
        return self._shutdown()

    def _connect(self) -> None:
        app = f"{self.queries.application_name}:{self.options.instance_id}"
        self.conn = psycopg.connect(self.settings.libpq_url(), autocommit=True,
                                    application_name=app, connect_timeout=5,
                                    keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                    keepalives_count=3)
        # Never a sequential or bitmap scan of the outbox from this session. With stale
        # statistics (a burst just drained) the planner would scan the whole table for every
        # claim; and only plain index scans mark the index entries of published rows dead,
        # so later claims skip them instead of visiting each dead row again until vacuum.
        # Measured: a claim of 3 new rows over 20,000 just-published ones, 11-15 ms -> 1-2 ms.
        self.conn.execute("set enable_seqscan = off")
        self.conn.execute("set enable_bitmapscan = off")
        self.health.database_ok = True
        self.health.detail = "running"
        self.next_rebalance = 0.0
        self.next_stats = 0.0
        self.next_poll = 0.0
        log.info("connected to the database", extra={"action": "db_connected"})

    def _lose_connection(self) -> None:
        """The session is gone and so are its shard locks: stop work that relied on them."""
        if self.producer is not None:
            # Deliveries still running are finished but not marked: the rows' next owner
            # sends them again (duplicates), which is the price of never losing one.
            self.producer.flush(self.options.shutdown_timeout)
        for batch in self._batches():
            if batch.marking is not None:
                with contextlib.suppress(Exception):  # its error is the one being handled
                    batch.marking.result(self.options.shutdown_timeout)
        dropped = sum(len(b.rows) for b in self._batches())
        self.in_flight = [None] * self.depth
        self.marking = []
        self.dirty = [True] * self.depth
        if self.shards.owned:
            log.warning("lost %d shards with the database session (%d rows unmarked)",
                        len(self.shards.owned), dropped, extra={"action": "shards_lost"})
        self.shards.forget()
        self.blocked.clear()
        self.metrics.owned_shards.set(0)
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):  # already broken: best effort
                self.conn.close()
        self.conn = None

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.options.shutdown_timeout
        log.info("stopping: finishing in-flight deliveries", extra={"action": "relay_stopping"})
        code = EXIT_OK
        try:
            while self._batches() and time.monotonic() < deadline:
                if self.producer is not None:
                    self.producer.poll(0.05)
                self._settle_completed()
            if self._batches():
                code = EXIT_SHUTDOWN_INCOMPLETE
                log.error("shutdown timeout: %d rows delivered-or-not but unmarked; the next "
                          "owner re-sends them", sum(len(b.rows) for b in self._batches()),
                          extra={"action": "shutdown_incomplete"})
            self.marker.close()
            # Dropping the producer stops librdkafka's threads (and their reconnect attempts).
            self.producer = None
            if self.conn is not None:
                self.shards.release_all(self.conn)
                self.conn.close()
        except psycopg.OperationalError as exc:
            code = EXIT_SHUTDOWN_INCOMPLETE
            log.error("database lost during shutdown: %s", first_line(exc),
                      extra={"action": "shutdown_incomplete"})
        log.info("relay stopped", extra={"action": "relay_stop", "exit_code": code,
                                         "published": self.published_total})
        return code

    # ------------------------------------------------------------------ one iteration
    def _tick(self) -> None:
        assert self.conn is not None and self.producer is not None
        now = time.monotonic()
        if now >= self.next_rebalance:
            self._rebalance()
            self.next_rebalance = now + self.options.rebalance_interval
        if now >= self.next_poll:
            self.dirty = [True] * self.depth  # polling is the guarantee; NOTIFY is a hint
            self.next_poll = now + self.options.poll_interval
        if self.wake.is_set():
            self.wake.clear()
            self.dirty = [True] * self.depth
        self.producer.poll(0)
        self._settle_completed()
        if now >= self.kafka_retry_at:
            for group in range(self.depth):
                if self.in_flight[group] is None and self.dirty[group]:
                    self._claim_and_produce(group)
        if now >= self.next_stats:
            self._refresh_stats()
            self.next_stats = now + self.options.stats_interval
        self.health.last_loop = time.monotonic()
        if any(b is not None for b in self.in_flight):
            # Serves delivery reports; returns as soon as one arrives.
            self.producer.poll(0.002)
        elif self.marking:
            self.wake.wait(0.002)  # a mark UPDATE is running: look again shortly
        elif not any(self.dirty) or time.monotonic() < self.kafka_retry_at:
            wake_at = min(self.next_poll, self.next_rebalance, self.next_stats)
            if time.monotonic() < self.kafka_retry_at:
                wake_at = min(wake_at, self.kafka_retry_at)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _rebalance(self) -> None:
        assert self.conn is not None
        acquired, released = self.shards.rebalance(
            self.conn, lambda shard: not self._group_busy(shard % self.depth))
        if released:
            released_set = set(released)
            self.blocked = {k: v for k, v in self.blocked.items()
                            if v[1] not in released_set}
            log.info("released %d shards (now %d)", len(released), len(self.shards.owned),
                     extra={"action": "shards_released", "shards": len(released)})
        if acquired:
            rows = self.conn.execute(self.queries.blocked_aggregates,
                                     {"shards": acquired}).fetchall()
            for agg_type, agg_id, seq, shard in rows:
                self.blocked[(str(agg_type), str(agg_id))] = (
                    int(seq), int(shard))
            self.dirty = [True] * self.depth
            log.info("acquired %d shards (now %d)", len(acquired), len(self.shards.owned),
                     extra={"action": "shards_acquired", "shards": len(acquired)})
        self.metrics.owned_shards.set(len(self.shards.owned))

    def _refresh_stats(self) -> None:
        assert self.conn is not None
        owned = sorted(self.shards.owned)
        row = self.conn.execute(self.queries.backlog, {"shards": owned}).fetchone()
        if row is not None:
            self.metrics.backlog.set(float(row[0]))
            self.metrics.oldest_age.set(float(row[1]) if row[1] is not None else 0.0)
        self.metrics.in_flight.set(sum(len(b.rows) for b in self._batches()))

    # ------------------------------------------------------------------ claim + produce
    def _claim_and_produce(self, group: int) -> None:
        assert self.conn is not None and self.producer is not None
        shards = [s for s in sorted(self.shards.owned) if s % self.depth == group]
        if not shards:
            self.dirty[group] = False
            return
        # Rotate the starting shard so a busy shard early in the list cannot starve others.
        self.rotation = (self.rotation + 1) % len(shards)
        shards = shards[self.rotation:] + shards[:self.rotation]
        limit = self.options.batch_size
        query = self.queries.claim if self.backlogged[group] else self.queries.claim_small
        rows = cast(list[Row], self.conn.execute(
            query, {"shards": shards, "limit": limit}).fetchall())
        self.dirty[group] = self.backlogged[group] = len(rows) >= limit
        if not rows:
            return
        if self.first_claim_at is None:
            self.first_claim_at = time.monotonic()
        marking = {row[9] for b in self.marking if b.group == group for row in b.rows}
        if marking:
            # Delivered, mark not committed yet: still pending to this claim, not to send.
            rows = [row for row in rows if row[9] not in marking]
            if not rows:
                return
        rows = self._hold_back_blocked(rows)
        if not rows:
            self.dirty[group] = True
            return
        batch = Batch(group=group, rows=rows)
        self.in_flight[group] = batch
        self._produce(batch)
        self.producer.poll(0)

    def _hold_back_blocked(self, rows: list[Row]) -> list[Row]:
        """Park rows whose aggregate already has a parked (failed) earlier row."""
        if not self.blocked:
            return rows
        keep: list[Row] = []
        held: list[int] = []
        for row in rows:
            key = (row[1], row[2])
            seq = row[9]
            head = self.blocked.get(key)
            if head is None:
                keep.append(row)
            elif seq <= head[0]:
                # The parked head itself is back (outbox relay retry-failed): unblock.
                del self.blocked[key]
                keep.append(row)
            else:
                held.append(seq)
        if held:
            assert self.conn is not None
            self.conn.execute(self.queries.hold_back, {
                "seqs": held, "error": "held back: an earlier event of this aggregate failed; "
                                      "run `outbox relay retry-failed` after fixing it"})
            self.metrics.parked.inc(len(held))
            log.warning("held back %d rows behind failed rows of their aggregates", len(held),
                        extra={"action": "rows_held_back", "rows": len(held)})
        return keep

    def _topic(self, aggregatetype: str) -> tuple[str, str | None]:
        topic = topic_for(aggregatetype, self.template)
        found = self.topics[aggregatetype] = (topic, invalid_topic_reason(topic))
        return found

    def _produce(self, batch: Batch) -> None:
        """Hand every row of the batch to librdkafka: the relay's per-row hot path."""
        assert self.producer is not None
        produce = self.producer.produce
        stopped: set[AggregateKey] = set()
        topics = self.topics
        delivered = self._delivered
        for index, row in enumerate(batch.rows):
            if stopped and (row[1], row[2]) in stopped:
                continue  # an earlier row of this aggregate already failed in this batch
            topic, reason = topics.get(row[1]) or self._topic(row[1])
            if reason is not None:
                batch.errors[index] = (True, reason)
                stopped.add((row[1], row[2]))
                continue
            key, value, headers, timestamp = stored_record_parts(cast(StoredRow, row))
            isolate = bool(self.suspects) and row[9] in self.suspects
            if isolate:
                self.producer.flush(self.options.shutdown_timeout)  # nothing queued before it
                batch.isolated.add(index)
            while True:
                try:
                    # A callback per row: a failed delivery report carries no headers,
                    # so the row index is the only way back to the row.
                    produce(topic, value, key, headers=cast(Headers, headers),
                            timestamp=timestamp,
                            on_delivery=functools.partial(delivered, batch, index))
                    batch.outstanding += 1
                    break
                except BufferError:
                    self.producer.poll(0.05)  # local queue full: let deliveries drain it
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    batch.errors[index] = (is_permanent(err), f"produce: {err.str()}")
                    stopped.add((row[1], row[2]))
                    break
            if isolate:
                self.producer.flush(self.options.shutdown_timeout)  # alone in its request
                if index in batch.errors:
                    stopped.add((row[1], row[2]))  # known outcome: later rows must wait

    def _delivered(self, batch: Batch, index: int, err: KafkaError | None,
                   msg: Message) -> None:
        batch.outstanding -= 1
        if err is not None:
            batch.errors[index] = (is_permanent(err), f"delivery: {err.str()}")
            batch.fatal = batch.fatal or err.fatal()
            return
        now = time.time()
        self.last_ack_at = time.monotonic()
        ts = msg.timestamp()[1]
        if ts > 0:
            self.metrics.latency.observe(max(0.0, now - ts / 1000.0))
        if self.on_ack is not None:
            self.on_ack(batch.rows[index][0], now)

    # ------------------------------------------------------------------ settle
    def _batches(self) -> list[Batch]:
        """Every batch not finished yet: producing, waiting for acks, or being marked."""
        return [b for b in self.in_flight if b is not None] + self.marking

    def _group_busy(self, group: int) -> bool:
        return self.in_flight[group] is not None or any(b.group == group for b in self.marking)

    def _settle_completed(self) -> None:
        """Hand acknowledged batches to the Marker; retire batches whose mark committed.

        A group is free for its next claim once its batch is marked, or, for a small batch
        (the group is not backlogged: the claim returned every pending row), as soon as
        the mark is submitted: the next claim drops the rows still being marked. Those
        rows are delivered, so later rows of their aggregates may go; if the mark fails
        they are sent again later, as duplicates after newer events (first-seen order per
        key holds). Under backlog the group waits for the mark, as the claim could not
        drop in-marking rows without costing every row a lookup.
        """
        for group, batch in enumerate(self.in_flight):
            if batch is None or batch.outstanding > 0:
                continue
            if batch.marking is None:
                self._settle(batch)
            assert batch.marking is not None
            if batch.marking.done() or not self.backlogged[group]:
                self.in_flight[group] = None
                self.dirty[group] = True
                self.marking.append(batch)
        for batch in [b for b in self.marking if b.marking is not None and b.marking.done()]:
            self.marking.remove(batch)
            assert batch.marking is not None
            error = batch.marking.exception()
            if error is not None:
                # Delivered but not recorded: claimed and sent again (duplicates).
                log.warning("marking %d rows published failed: %s", batch.marked_count,
                            first_line(error), extra={"action": "mark_failed"})
            else:
                self.metrics.published.inc(batch.marked_count)
                self.published_total += batch.marked_count

    def _settle(self, batch: Batch) -> None:
        """All delivery reports are in: hand the good rows to the Marker, record failures."""
        assert self.conn is not None
        stopped: set[AggregateKey] = set()
        ok: list[int] = []
        failures: list[tuple[Row, bool, str]] = []
        for index, row in enumerate(batch.rows):
            key = (row[1], row[2])
            if key in stopped:
                continue
            error = batch.errors.get(index)
            if error is None:
                ok.append(row[9])
            else:
                stopped.add(key)
                failures.append((row, *error))
        done: Future[int] = Future()
        if ok:
            batch.marked_count = len(ok)
            batch.marking = self.marker.submit(ok)
        else:
            done.set_result(0)
            batch.marking = done
        if self.suspects:
            self.suspects.difference_update(ok)
        transient = 0
        index_of = {row[9]: i for i, row in enumerate(batch.rows)} if failures else {}
        for row, permanent, message in failures:
            if permanent and message.startswith("delivery:") and (
                    index_of[row[9]] not in batch.isolated):
                # Maybe a neighbour's fault: retry it alone first, uncounted.
                self.suspects.add(row[9])
                self.kafka_retry_at = max(self.kafka_retry_at,
                                          time.monotonic() + compute_backoff(1))
            elif permanent:
                self.suspects.discard(row[9])
                self._record_failure(row, message)
            else:
                transient += 1
        if transient:
            self.metrics.delivery_errors.labels("transient").inc(transient)
            self.kafka_failures += 1
            self.health.kafka_ok = False
            delay = compute_backoff(self.kafka_failures)
            self.kafka_retry_at = time.monotonic() + delay
            log.warning("%d deliveries failed (%s), retrying in %.1fs", transient,
                        failures[0][2], delay,
                        extra={"action": "kafka_unavailable", "attempt": self.kafka_failures})
        elif ok:
            if self.kafka_failures:
                log.info("Kafka deliveries succeed again", extra={"action": "kafka_recovered"})
            self.kafka_failures = 0
            self.health.kafka_ok = True
        if batch.fatal:
            # A fatal idempotent-producer state (e.g. fenced epoch) cannot be retried on the
            # same producer: start a fresh one; unmarked rows are simply claimed again.
            log.error("Kafka producer hit a fatal error; creating a new producer",
                      extra={"action": "producer_reset"})
            if self.producer is not None and not any(
                    b is not batch and b.outstanding for b in self._batches()):
                self.producer = None

    def _record_failure(self, row: Row, message: str) -> None:
        assert self.conn is not None
        seq = row[9]
        self.metrics.delivery_errors.labels("permanent").inc()
        result = self.conn.execute(self.queries.record_failure, {
            "seq": seq, "error": message[:2000], "max_attempts": self.options.max_attempts,
        }).fetchone()
        parked = bool(result and result[0])
        key = (row[1], row[2])
        log.warning("event %s (%s %s) failed: %s%s", row[0], key[0], key[1], message,
                    " - parked" if parked else "",
                    extra={"action": "row_parked" if parked else "row_failed",
                           "event_id": str(row[0]), "seq": seq})
        if parked:
            self.metrics.parked.inc()
            self.blocked[key] = (seq, row[10])
        else:
            # Retry the row after a pause rather than at once: it just failed for good reason.
            self.kafka_retry_at = max(self.kafka_retry_at, time.monotonic() + compute_backoff(
                row[11] + 1))

    # ------------------------------------------------------------------ side threads
    def _on_client_error(self, err: KafkaError) -> None:
        # librdkafka reports broker connection trouble here; deliveries keep retrying.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.kafka_ok = False
        log.warning("Kafka client: %s", err.str(), extra={"action": "kafka_client_error"})

    def _listen(self) -> None:
        """Wake the loop on NOTIFY (a hint only: polling still finds every row)."""
        failures = 0
        app = f"outbox-relay-listen:{self.options.instance_id}"
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.settings.libpq_url(), autocommit=True,
                                     application_name=app, connect_timeout=5) as conn:
                    conn.execute(f"listen {self.queries.channel}")
                    failures = 0
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake.set()
            except psycopg.OperationalError as exc:
                if self.stopping.is_set():
                    return  # the database went away during shutdown: nothing to wake
                failures += 1
                log.warning("LISTEN connection lost: %s", first_line(exc),
                            extra={"action": "listen_unavailable"})
                self.stopping.wait(compute_backoff(failures))

    def _purge_loop(self) -> None:
        assert self.options.retention_seconds is not None
        from relay.retention import purge

        failures = 0
        while not self.stopping.wait(0 if failures == 0 else compute_backoff(failures)):
            try:
                purge(self.settings, self.options.retention_seconds,
                      batch_size=self.options.purge_batch, stop=self.stopping)
                failures = 0
            except psycopg.OperationalError as exc:
                failures += 1
                log.warning("purge failed: %s", first_line(exc),
                            extra={"action": "purge_failed"})
                continue
            if self.stopping.wait(self.options.purge_interval):
                return


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver errors span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
