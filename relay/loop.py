"""The relay loop: read each owned shard group's window, produce it, record progress.

The loop owns the session that holds the shard locks (relay.shards) and the producer;
everything it does per batch is in the modules it calls:

- relay.groups: shard groups (``shard % pipeline_depth``, one batch in flight each), their
  windows (relay.window) and the progress written for them;
- relay.produce: the hot path, one record per row;
- relay.delivery: what the delivery reports of a settled batch mean (pure);
- relay.failures: rows off the fast path and the aggregates they hold back;
- relay.background: the NOTIFY, statistics and retention threads.

Settling a batch (all delivery reports in): failures and holds are written before the
progress that passes them, so a crash in between can only make the relay send rows again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import cast

import psycopg
from confluent_kafka import KafkaException, Producer

from outbox.backoff import compute_backoff
from outbox.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_SHUTDOWN_INCOMPLETE, EXIT_WORKER_DIED
from outbox.record import topic_for
from outbox.settings import Settings
from outbox.tracing import RelaySpans
from relay import background
from relay.connections import Connection, connect, first_line
from relay.delivery import Batch
from relay.failures import FailureLane
from relay.groups import (
    Progress,
    ShardGroup,
    mark_all,
    mark_hinted,
    prefetch,
    read_window,
)
from relay.hints import Hints, note_outdated_trigger
from relay.metrics import Health, RelayMetrics
from relay.options import RelayOptions
from relay.produce import AckHook, Sender
from relay.producer import make_producer, producer_config
from relay.queries import Queries
from relay.reader import WindowReader
from relay.rows import BY_SEQ, Row
from relay.settle import KafkaBackoff, Settler
from relay.shards import ShardOwnership

log = logging.getLogger("outbox.relay")

__all__ = ["AckHook", "Batch", "Relay", "RelayOptions", "first_line"]


class Relay:
    """One relay instance. ``run()`` blocks until ``request_stop()``; returns an exit code.

    ``on_ack(event_id, time)`` (benchmarks) is called for every acknowledged record.
    """

    def __init__(self, settings: Settings, options: RelayOptions | None = None,
                 on_ack: AckHook | None = None) -> None:
        self.settings = settings
        self.options = options or RelayOptions()
        self.queries = Queries.for_settings(settings)
        self.metrics = RelayMetrics()
        self.health = Health()
        # Unix time of the loop's last turn, read at scrape time (no cost in the loop).
        self.metrics.last_loop.set_function(
            lambda: time.time() - (time.monotonic() - self.health.last_loop))
        self.depth = max(1, self.options.pipeline_depth)
        self.shards = ShardOwnership(self.queries, siblings=self.options.siblings,
                                     groups=self.depth)
        self.groups = [ShardGroup(i) for i in range(self.depth)]
        self.progress = Progress(self.queries, self.options.progress_interval)
        self.failures = FailureLane(self.queries, self.metrics, self.options.max_attempts)
        self.sender = Sender(settings, self.options.shutdown_timeout, on_ack)
        self.kafka = KafkaBackoff(self.health, self.metrics)
        # OpenTelemetry send spans per batch (outbox.tracing; no-op without a provider)
        self.spans = RelaySpans(lambda aggregatetype: topic_for(aggregatetype,
                                                                settings.topic_template))
        self.settler = Settler(self.queries, self.metrics, self.groups, self.progress,
                               self.failures, self.kafka, self.spans)
        self.conn: Connection | None = None
        self.producer: Producer | None = None
        self.wake = threading.Event()
        # shards named by NOTIFY (relay.hints), and whether commits send them at all
        self.hints = Hints()
        self.notified = False
        self.old_trigger_noted = False
        self.stopping = threading.Event()
        self.thread_died: str | None = None  # a side thread that raised: exit 7
        self.next_rebalance = self.next_poll = self.next_stats = 0.0
        self.published_total = 0

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Finish in-flight deliveries, record them, release the shards, return from run()."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        """The daemon: loop until asked to stop, surviving PostgreSQL and Kafka outages."""
        try:
            return self._run()
        finally:
            # However it ends (a configuration error, a crash), the side threads end too.
            self.stopping.set()

    def _run(self) -> int:
        opts = self.options
        log.info("relay starting", extra={
            "action": "relay_start", "instance": opts.instance_id,
            "table": self.queries.name, "batch_size": opts.batch_size,
            "listen": opts.listen, "poll_interval": opts.poll_interval})
        db_failures = 0
        side_threads = False
        while not self.stopping.is_set():
            try:
                # The producer first: its idempotent producer id is fetched meanwhile.
                if self.producer is None:
                    try:
                        self.producer = make_producer(
                            producer_config(self.settings.producer_config(),
                                            f"outbox-relay-{opts.instance_id}"),
                            error_cb=self.kafka.on_client_error)
                    except KafkaException as exc:
                        log.error("the Kafka producer configuration was rejected: %s; check "
                                  "OUTBOX_KAFKA_CONFIG / --kafka-config", exc.args[0].str(),
                                  extra={"action": "config_error"})
                        self._lose_connection()
                        return EXIT_CONFIG
                if self.conn is None:
                    conn = self._connect()
                    problem = self.queries.relay_problem(
                        conn, deletes=opts.retention_seconds is not None)
                    if problem is not None:
                        log.error("%s", problem, extra={"action": "config_error"})
                        self._lose_connection()
                        return EXIT_CONFIG
                    if not side_threads:  # they rely on the same tables and grants
                        background.start_all(
                            self.settings, self.queries, opts, self.hints, self.wake,
                            self.metrics, lambda: self.shards.sorted, self.stopping,
                            self._side_thread_died)
                        side_threads = True
                self._tick()
                db_failures = 0
            except psycopg.errors.InsufficientPrivilege as exc:  # a grant revoked meanwhile
                log.error("the database refused the relay: %s; grant its role what `outbox db "
                          "roles --sql` grants the relay role", first_line(exc),
                          extra={"action": "config_error"})
                self._lose_connection()
                return EXIT_CONFIG
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
        code = self._shutdown()
        return EXIT_WORKER_DIED if self.thread_died is not None else code

    def _side_thread_died(self, name: str, exc: Exception) -> None:
        if background.failed(name, exc, self.health, self.stopping):
            self.thread_died = name
            self.request_stop()

    def _connect(self) -> Connection:
        app = f"{self.queries.application_name}:{self.options.instance_id}"
        conn = self.conn = connect(self.settings, app, reads_outbox=True, holds_locks=True)
        self.health.database_ok = True
        self.health.detail = "running"
        self.next_rebalance = self.next_stats = self.next_poll = 0.0
        log.info("connected to the database", extra={"action": "db_connected"})
        return conn

    def _lose_connection(self) -> None:
        """The session is gone and so are its shard locks: stop work that relied on them."""
        if self.producer is not None:
            # Deliveries still running are finished but not recorded: the rows' next owner
            # sends them again (duplicates), which is the price of never losing one.
            self.producer.flush(self.options.shutdown_timeout)
        dropped = sum(len(b.rows) for b in self._batches())
        for group in self.groups:
            group.reset()
        if self.shards.owned:
            log.warning("lost %d shards with the database session (%d rows unrecorded)",
                        len(self.shards.owned), dropped, extra={"action": "shards_lost"})
        self.shards.forget()
        self.failures.clear()
        self.progress.clear()  # lost with the session: those rows are sent again
        self._close_readers()
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
                log.error("shutdown timeout: %d rows delivered-or-not but unrecorded; the "
                          "next owner re-sends them", sum(len(b.rows) for b in self._batches()),
                          extra={"action": "shutdown_incomplete"})
            self._close_readers()
            if self.conn is not None:
                self.progress.save(self.conn, force=True)
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

    def _close_readers(self) -> None:
        for group in self.groups:
            group.shutdown_reader()

    # ------------------------------------------------------------------ one iteration
    def _tick(self) -> None:
        assert self.conn is not None and self.producer is not None
        now = time.monotonic()
        if now >= self.next_rebalance:
            self._rebalance()
            self.next_rebalance = now + self.options.rebalance_interval
        if now >= self.next_poll:
            # Polling is the guarantee, NOTIFY a hint; `outbox relay retry-failed` un-parks.
            mark_all(self.groups, retry=True)
            self.next_poll = now + self.options.poll_interval
        if self.wake.is_set():
            self.wake.clear()
            mark_hinted(self.groups, self.shards.owned, self.hints.take())
        self.producer.poll(0)
        self._settle_completed()
        if now >= self.kafka.retry_at:
            for group in self.groups:
                self._prefetch(group)
            for group in self.groups:
                if group.in_flight is None and group.has_work:
                    self._claim_and_produce(group.index)
        if now >= self.next_stats:
            self.metrics.in_flight.set(sum(len(b.rows) for b in self._batches()))
            self.next_stats = now + self.options.stats_interval
        self.health.last_loop = time.monotonic()
        if any(g.in_flight is not None for g in self.groups):
            # Serves delivery reports; returns as soon as one arrives.
            self.producer.poll(0.002)
        elif (not any(g.has_work for g in self.groups)
              or time.monotonic() < self.kafka.retry_at):
            wake_at = min(self.next_poll, self.next_rebalance, self.next_stats)
            if time.monotonic() < self.kafka.retry_at:
                wake_at = min(wake_at, self.kafka.retry_at)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _rebalance(self) -> None:
        assert self.conn is not None
        self.progress.save(self.conn, force=True)  # a released shard leaves with its progress
        acquired, released = self.shards.rebalance(
            self.conn, lambda shard: self.groups[shard % self.depth].in_flight is None)
        if released:
            self.failures.forget(set(released))
            for shard in released:
                self.progress.cursors.pop(shard, None)  # the next owner moves it on
            log.info("released %d shards (now %d)", len(released), len(self.shards.owned),
                     extra={"action": "shards_released", "shards": len(released)})
        if acquired:
            self.failures.load(self.conn, acquired)
            mark_all(self.groups, retry=True)
            log.info("acquired %d shards (now %d)", len(acquired), len(self.shards.owned),
                     extra={"action": "shards_acquired", "shards": len(acquired)})
        self.metrics.owned_shards.set(len(self.shards.owned))
        # Commits wake the loop (LISTEN, and the trigger installed): a group whose window
        # was delivered whole waits for them instead of reading again at once.
        trigger = self.queries.notify_installed(self.conn) if self.options.listen else None
        self.notified = trigger is not None
        if trigger is False and not self.old_trigger_noted:
            self.old_trigger_noted = True
            note_outdated_trigger(self.queries.name)

    # ------------------------------------------------------------------ claim + produce
    def _reader(self, group: ShardGroup) -> WindowReader:
        app = f"{self.queries.application_name}-read:{self.options.instance_id}"
        return group.open_reader(self.settings, self.queries, app, self.options.batch_size)

    def _prefetch(self, group: ShardGroup) -> None:
        if (group.window is None and group.backlogged and group.in_flight is None
                and group.dirty):
            assert self.conn is not None
            prefetch(group, self._reader(group), self.conn, self.progress,
                     self.shards.by_group[group.index])

    def _claim_and_produce(self, index: int) -> None:
        assert self.conn is not None and self.producer is not None
        group = self.groups[index]
        shards = self.shards.by_group[index]
        if not shards:
            group.dirty = False
            group.hinted.clear()  # of shards released since
            return
        limit = self.options.batch_size
        if group.retry_due:
            rows = cast(list[Row], self.conn.execute(
                self.queries.claim_retry, {"shards": shards, "limit": limit}).fetchall())
            group.retry_due = len(rows) >= limit
            rows = self._divert_blocked(rows, fast_path=False)
            if rows:
                self._start(Batch(group=index, rows=rows, fast_path=False))
                return
        hinted, group.hinted = group.hinted, set()
        if not group.dirty and group.window is None and not group.backlogged:
            # Only NOTIFY woke it: read the shards it named (relay.hints).
            shards = [s for s in shards if s in hinted]
            if not shards:
                return
        rows = read_window(group, self._reader(group), self.conn, self.queries, self.progress,
                           shards, limit)
        window = group.window
        if window is None:
            group.dirty = group.retry_due
            return
        group.dirty = not window.exhausted
        self._start(Batch(group=index, rows=self._divert_blocked(rows, fast_path=True),
                          read=rows, ends_window=window.exhausted))

    def _divert_blocked(self, rows: list[Row], fast_path: bool) -> list[Row]:
        assert self.conn is not None
        keep, park, wait = self.failures.divert(rows, fast_path)
        self.settler.hold(self.conn, park, wait)
        return keep

    def _start(self, batch: Batch) -> None:
        assert self.producer is not None
        self.groups[batch.group].in_flight = batch
        if self.spans.started(batch, batch.rows, written=BY_SEQ):
            batch.partitions = set()  # collected for the span's partition attribute
        self._produce(batch)
        self.producer.poll(0)

    def _produce(self, batch: Batch) -> None:
        """Hand every row of the batch to librdkafka (relay.produce)."""
        assert self.producer is not None
        self.sender.send(self.producer, batch, self.failures.suspects)

    # ------------------------------------------------------------------ settle
    def _batches(self) -> list[Batch]:
        """Every batch not settled yet: producing or waiting for delivery reports."""
        return [g.in_flight for g in self.groups if g.in_flight is not None]

    def _settle_completed(self) -> None:
        """Settle every batch whose delivery reports are all in; its group may claim again."""
        for group in self.groups:
            batch = group.in_flight
            if batch is None or batch.outstanding > 0:
                continue
            group.in_flight = None
            self._settle(batch)
            # More to read, rows to read again, or (without NOTIFY) rows committed meanwhile;
            # and a poll while it was in flight still reads every shard.
            group.dirty = group.dirty or not (self.notified and batch.completes_window)
        if self.conn is not None:
            self.progress.save(self.conn)

    def _settle(self, batch: Batch) -> None:
        """All delivery reports are in: record failures, then the progress they allow."""
        assert self.conn is not None
        self.published_total += self.settler.settle(self.conn, batch,
                                                    self.shards.by_group[batch.group])
        if batch.fatal:
            # A fatal idempotent-producer state (e.g. fenced epoch) cannot be retried on the
            # same producer: start a fresh one; unrecorded rows are simply read again.
            log.error("Kafka producer hit a fatal error; creating a new producer",
                      extra={"action": "producer_reset"})
            if self.producer is not None and not any(b.outstanding for b in self._batches()):
                self.producer = None
