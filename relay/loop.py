"""The relay loop: read each owned shard group's window, produce it, record progress.

Pipelining: the owned shards are split into ``pipeline_depth`` groups (``shard % depth``).
At most one batch per group is in flight, so while Kafka acknowledges group 0's batch the
loop reads and produces group 1's. A shard is never in two batches at once.

What is pending and what was delivered is kept per shard by relay.window (snapshot
windows, one progress write per batch) rather than by updating each row. Rows that fail
leave that fast path: the failure is recorded on the row, later rows of its aggregate
follow it, and the retry claim sends them one by one, marking each (``published_at``).

Settling a batch (all delivery reports in): per aggregate, rows after its first failed one
do not count as delivered. A transient failure makes the window be read again from the
earliest failed row (rows Kafka did accept after it are sent again: duplicates, never a
gap or an overtaking).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from outbox.backoff import compute_backoff
from outbox.cloudevents import record_headers
from outbox.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_SHUTDOWN_INCOMPLETE
from outbox.logs import event_fields
from outbox.record import (
    StoredRow,
    compact_json,
    compact_json_many,
    invalid_topic_reason,
    topic_for,
)
from outbox.rules import record_too_large, relay_record_size
from outbox.settings import Settings
from outbox.tracing import RelaySpans
from relay.metrics import Health, RelayMetrics
from relay.producer import is_permanent, make_producer, producer_config
from relay.queries import Queries, prefer_index_scans, read_backlog
from relay.reader import WindowReader
from relay.shards import ShardOwnership
from relay.window import ShardCursor, Window, open_window, progress, read_params

log = logging.getLogger("outbox.relay")


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
    # None: keep delivered rows (purge them with `outbox purge`); otherwise the daemon
    # purges rows delivered and older than this every purge_interval (0: as soon as they
    # are delivered, keeping nothing to replay).
    retention_seconds: float | None = None
    # seconds between writes of delivery progress (relay.window): what a crash re-sends
    progress_interval: float = 0.2
    purge_interval: float = 60.0
    purge_batch: int = 1000
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class Batch:
    """Rows of one shard group produced together, and what Kafka said about each."""

    group: int
    rows: list[Row]
    # rows of the fast path (a window) or of the retry claim (marked one by one)
    fast_path: bool = True
    # every row read from the window for this batch, in seq order, also those diverted
    # behind a failed row instead of produced
    read: list[Row] = field(default_factory=list)
    # the read reached the end of the window
    ends_window: bool = False
    outstanding: int = 0
    # row index -> (permanent?, message); a failed produce() or a failed delivery
    errors: dict[int, tuple[bool, str]] = field(default_factory=dict)
    # indexes of rows produced alone (see Relay.suspects), so their errors are their own
    isolated: set[int] = field(default_factory=set)
    # (key, value, permanent?, message) of failed reports of the batch's shared callback
    failed_reports: list[tuple[bytes | None, bytes | None, bool, str]] = field(
        default_factory=list)
    fatal: bool = False


@dataclass(frozen=True)
class Blocked:
    """An aggregate with an undelivered row off the fast path: its later rows wait."""

    seq: int  # its first such row
    shard: int
    parked: bool  # that row is parked (failed_at): later rows are parked too


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
        self.dirty = [True] * depth
        # per group: the window being read, and the connection holding its server cursor
        self.windows: list[Window | None] = [None] * depth
        self.readers: list[WindowReader | None] = [None] * depth
        # per group: whether its last window was larger than a batch (read it by cursor)
        self.backlogged = [True] * depth
        # per group: whether the retry claim may find rows
        self.retry_due = [True] * depth
        # owned shard -> its relay cursor (relay.window), and those not written yet
        self.cursors: dict[int, ShardCursor] = {}
        self.unsaved: dict[int, ShardCursor] = {}
        self.next_save = 0.0
        self.blocked: dict[AggregateKey, Blocked] = {}
        self.conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.producer: Producer | None = None
        self.wake = threading.Event()
        # seqs whose delivery failed with a permanent error while sharing a produce request
        # with other records: the broker rejects a whole record batch (e.g. one record over
        # the topic's max.message.bytes), so the error may belong to a neighbour. Such a row
        # is retried alone before any attempt is counted against it.
        self.suspects: set[int] = set()
        self.stopping = threading.Event()
        self.kafka_failures = 0
        self.kafka_retry_at = 0.0
        self.template = settings.topic_template
        # OpenTelemetry send spans per batch (outbox.tracing; no-op without a provider)
        self.spans = RelaySpans(lambda aggregatetype: topic_for(aggregatetype, self.template))
        # a stored row's record headers (outbox.cloudevents: the ce_* ones added if enabled)
        self.headers_of = record_headers(settings)
        # outbox.rules: the record-size rule publish() applies, checked again here for rows
        # written another way; values shorter than this (4 bytes a character at most, plus
        # key and headers) cannot exceed the limit, so most rows skip the exact count.
        self.max_record_bytes = settings.max_record_bytes
        self.size_guard = (settings.max_record_bytes - 6000) // 4
        # aggregatetype -> (topic, why Kafka would refuse that name or None)
        self.topics: dict[str, tuple[str, str | None]] = {}
        self.first_claim_at: float | None = None
        self.last_ack_at: float | None = None
        self.published_total = 0
        # the owned shards as the stats thread sees them (replaced, never mutated)
        self.owned_now: tuple[int, ...] = ()

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self) -> None:
        """Finish in-flight deliveries, record them, release the shards, return from run()."""
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        """The daemon: loop until asked to stop, surviving PostgreSQL and Kafka outages."""
        opts = self.options
        log.info("relay starting", extra={
            "action": "relay_start", "instance": opts.instance_id,
            "table": self.queries.name, "batch_size": opts.batch_size,
            "listen": opts.listen, "poll_interval": opts.poll_interval})
        if opts.listen:
            threading.Thread(target=self._listen, name="relay-listen", daemon=True).start()
        threading.Thread(target=self._stats_loop, name="relay-stats", daemon=True).start()
        if opts.retention_seconds is not None:
            threading.Thread(target=self._purge_loop, name="relay-purge", daemon=True).start()
        db_failures = 0
        while not self.stopping.is_set():
            try:
                if self.conn is None:
                    problem = self.queries.schema_problem(self._connect())
                    if problem is not None:
                        log.error("%s", problem, extra={"action": "config_error"})
                        self._lose_connection()
                        return EXIT_CONFIG
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

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        app = f"{self.queries.application_name}:{self.options.instance_id}"
        conn = self.conn = psycopg.connect(self.settings.libpq_url(), autocommit=True,
                                    application_name=app, connect_timeout=5,
                                    keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                    keepalives_count=3)
        prefer_index_scans(conn)
        self.health.database_ok = True
        self.health.detail = "running"
        self.next_rebalance = 0.0
        self.next_stats = 0.0
        self.next_poll = 0.0
        log.info("connected to the database", extra={"action": "db_connected"})
        return conn

    def _lose_connection(self) -> None:
        """The session is gone and so are its shard locks: stop work that relied on them."""
        if self.producer is not None:
            # Deliveries still running are finished but not recorded: the rows' next owner
            # sends them again (duplicates), which is the price of never losing one.
            self.producer.flush(self.options.shutdown_timeout)
        dropped = sum(len(b.rows) for b in self._batches())
        self.in_flight = [None] * self.depth
        self.dirty = [True] * self.depth
        self.retry_due = [True] * self.depth
        if self.shards.owned:
            log.warning("lost %d shards with the database session (%d rows unrecorded)",
                        len(self.shards.owned), dropped, extra={"action": "shards_lost"})
        self.shards.forget()
        self.owned_now = ()
        self.blocked.clear()
        self.cursors.clear()
        self.unsaved.clear()  # lost with the session: those rows are sent again
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
                self._save_progress(force=True)
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
            self.retry_due = [True] * self.depth  # `outbox relay retry-failed` un-parks rows
            self.next_poll = now + self.options.poll_interval
        if self.wake.is_set():
            self.wake.clear()
            self.dirty = [True] * self.depth
        self.producer.poll(0)
        self._settle_completed()
        if now >= self.kafka_retry_at:
            for group in range(self.depth):
                self._prefetch(group)
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
        elif not any(self.dirty) or time.monotonic() < self.kafka_retry_at:
            wake_at = min(self.next_poll, self.next_rebalance, self.next_stats)
            if time.monotonic() < self.kafka_retry_at:
                wake_at = min(wake_at, self.kafka_retry_at)
            self.wake.wait(max(0.0, wake_at - time.monotonic()))

    def _rebalance(self) -> None:
        assert self.conn is not None
        self._save_progress(force=True)  # a shard released below leaves with its progress
        acquired, released = self.shards.rebalance(
            self.conn, lambda shard: not self._group_busy(shard % self.depth))
        if released:
            released_set = set(released)
            self.blocked = {k: v for k, v in self.blocked.items()
                            if v.shard not in released_set}
            for shard in released:
                self.cursors.pop(shard, None)  # the next owner moves it on
            log.info("released %d shards (now %d)", len(released), len(self.shards.owned),
                     extra={"action": "shards_released", "shards": len(released)})
        if acquired:
            self._load_blocked(acquired)
            self.dirty = [True] * self.depth
            self.retry_due = [True] * self.depth
            log.info("acquired %d shards (now %d)", len(acquired), len(self.shards.owned),
                     extra={"action": "shards_acquired", "shards": len(acquired)})
        self.metrics.owned_shards.set(len(self.shards.owned))
        self.owned_now = tuple(sorted(self.shards.owned))

    def _refresh_stats(self) -> None:
        self.metrics.in_flight.set(sum(len(b.rows) for b in self._batches()))

    # ------------------------------------------------------------------ claim + produce
    def _claim_and_produce(self, group: int) -> None:
        assert self.conn is not None and self.producer is not None
        shards = [s for s in sorted(self.shards.owned) if s % self.depth == group]
        if not shards:
            self.dirty[group] = False
            return
        limit = self.options.batch_size
        if self.retry_due[group]:
            rows = cast(list[Row], self.conn.execute(
                self.queries.claim_retry, {"shards": shards, "limit": limit}).fetchall())
            self.retry_due[group] = len(rows) >= limit
            rows = self._divert_blocked(rows, fast_path=False)
            if rows:
                self._start(Batch(group=group, rows=rows, fast_path=False))
                return
        rows = self._read_window(group, shards, limit)
        window = self.windows[group]
        if window is None:
            self.dirty[group] = self.retry_due[group]
            return
        self.dirty[group] = not window.exhausted
        batch = Batch(group=group, rows=self._divert_blocked(rows, fast_path=True),
                      read=rows, ends_window=window.exhausted)
        self._start(batch)

    def _start(self, batch: Batch) -> None:
        assert self.producer is not None
        if self.first_claim_at is None:
            self.first_claim_at = time.monotonic()
        self.in_flight[batch.group] = batch
        self.spans.started(batch, batch.rows)
        self._produce(batch)
        self.producer.poll(0)

    def _read_window(self, group: int, shards: list[int], limit: int) -> list[Row]:
        """The next rows of the group's window, opening a window if none is open.

        While the relay keeps up, a window holds a few rows and is read whole by one
        statement on the main connection. Under a backlog it is read through the group's
        WindowReader (a server-side cursor, fetched one batch ahead); a group switches to
        that after a window did not fit one batch, and back after one that did.
        """
        assert self.conn is not None
        window = self.windows[group]
        if window is not None and set(window.wins) != set(shards):
            self._close_window(group)  # shards came or went since it was opened
            window = None
        reader = self._reader(group)
        if reader.open and window is None and reader.shards != shards:
            reader.close()  # started for other shards (_prefetch)
        if window is None:
            self._load_cursors(shards)
            if not self.backlogged[group]:
                params: dict[str, Any] = read_params(shards, self.cursors, None)
                params["limit"] = limit + 1
                first = self.conn.execute(self.queries.first_window_batch, params).fetchall()
                if not first:
                    return []
                window = self.windows[group] = open_window(shards, self.cursors, first[0][-1])
                window.exhausted = len(first) <= limit
                self.backlogged[group] = not window.exhausted
                return self._advance(window, [cast(Row, r[:-1]) for r in first[:limit]])
            if not reader.open:
                reader.start(shards, read_params(shards, self.cursors, None))
            rows = cast(list[Row], reader.fetch())
            assert reader.snapshot is not None
            window = self.windows[group] = open_window(shards, self.cursors, reader.snapshot)
        elif window.exhausted:
            return []
        else:
            if not reader.open:
                reader.resume(shards, read_params(shards, self.cursors, window.wins,
                                                  after=window.read_upto))
            rows = cast(list[Row], reader.fetch())
        if not reader.open:
            window.exhausted = True
            if window.read_upto == 0:  # the whole window fitted one batch
                self.backlogged[group] = False
        if not rows and not window.touched:
            self.windows[group] = None  # an empty window: nothing to record
            return []
        return self._advance(window, rows)

    def _prefetch(self, group: int) -> None:
        """Under a backlog, start reading the group's next window before it is claimed, so
        PostgreSQL sorts it while the loop works on the other groups."""
        if (self.windows[group] is not None or not self.backlogged[group]
                or self.in_flight[group] is not None or not self.dirty[group]):
            return
        shards = [s for s in sorted(self.shards.owned) if s % self.depth == group]
        reader = self._reader(group)
        if shards and not reader.open:
            self._load_cursors(shards)
            reader.start(shards, read_params(shards, self.cursors, None))

    @staticmethod
    def _advance(window: Window, rows: list[Row]) -> list[Row]:
        if rows:
            window.read_upto = rows[-1][9]
            window.touched |= {row[10] for row in rows}
        return rows

    def _reader(self, group: int) -> WindowReader:
        reader = self.readers[group]
        if reader is None:
            app = f"{self.queries.application_name}-read:{self.options.instance_id}"
            reader = self.readers[group] = WindowReader(
                self.settings, self.queries, app, self.options.batch_size)
        return reader

    def _close_readers(self) -> None:
        self.windows = [None] * self.depth
        readers, self.readers = self.readers, [None] * self.depth
        for reader in readers:
            if reader is not None:
                reader.shutdown()

    def _close_window(self, group: int) -> None:
        """Forget the group's window; the next claim opens one from the shards' cursors."""
        self.windows[group] = None
        reader = self.readers[group]
        if reader is not None:
            reader.close()

    def _load_cursors(self, shards: list[int]) -> None:
        """The relay cursor of owned shards not known yet (only this session writes them
        while it holds the shards' locks)."""
        assert self.conn is not None
        missing = [s for s in shards if s not in self.cursors]
        if not missing:
            return
        for shard, done, win, upto in self.conn.execute(
                self.queries.load_cursors, {"shards": missing}).fetchall():
            self.cursors[int(shard)] = ShardCursor(str(done), win, int(upto))
        for shard in missing:
            self.cursors.setdefault(shard, ShardCursor())

    def _divert_blocked(self, rows: list[Row], fast_path: bool) -> list[Row]:
        """Take rows of aggregates with an undelivered earlier failure out of the batch.

        Behind a parked row they are parked too ("held back"); behind a row that is still
        being retried they leave the fast path and follow it through the retry claim.
        """
        if not self.blocked:
            return rows
        keep: list[Row] = []
        park: list[int] = []
        wait: list[int] = []
        for row in rows:
            key = (row[1], row[2])
            head = self.blocked.get(key)
            if head is None:
                keep.append(row)
            elif not fast_path and row[9] <= head.seq:
                # The parked head itself is back (outbox relay retry-failed): retry it.
                self.blocked[key] = Blocked(row[9], row[10], parked=False)
                keep.append(row)
            elif head.parked:
                park.append(row[9])
            elif fast_path:
                wait.append(row[9])
            else:
                keep.append(row)  # a follower of a retried head: in order behind it
        self._hold(park, wait)
        return keep

    def _hold(self, park: list[int], wait: list[int]) -> None:
        assert self.conn is not None
        if park:
            self.conn.execute(self.queries.hold_back, {
                "seqs": park, "error": "held back: an earlier event of this aggregate failed; "
                                       "run `outbox relay retry-failed` after fixing it"})
            self.metrics.parked.inc(len(park))
            log.warning("held back %d rows behind failed rows of their aggregates", len(park),
                        extra={"action": "rows_held_back", "rows": len(park)})
        if wait:
            self.conn.execute(self.queries.hold_waiting, {
                "seqs": wait, "error": "waiting: an earlier event of this aggregate is being "
                                       "retried"})
            self.retry_due = [True] * self.depth

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
        # One callback for the batch, not one per record (a per-record functools.partial
        # cost ~1 µs per row of a ~5 µs loop); a failed report is traced back to its row
        # at settle (_attribute_failures). Rows retried alone keep an exact callback.
        on_batch = functools.partial(self._batch_delivered, batch)
        # The on_ack hook (benchmarks) needs each record's row: reports carry no headers.
        exact = self.on_ack
        suspects = self.suspects
        headers_of = self.headers_of
        # Payloads compacted for the whole batch at once (outbox.record.compact_json_many).
        values = iter(compact_json_many([row[4] for row in batch.rows if row[4] is not None]))
        for index, row in enumerate(batch.rows):
            value = None if row[4] is None else next(values)
            if stopped and (row[1], row[2]) in stopped:
                continue  # an earlier row of this aggregate already failed in this batch
            topic, reason = topics.get(row[1]) or self._topic(row[1])
            if reason is not None:
                batch.errors[index] = (True, reason)
                stopped.add((row[1], row[2]))
                continue
            headers = headers_of(cast(StoredRow, row))
            if value is not None and len(value) > self.size_guard:
                size = relay_record_size(row[2], value, headers)
                if size > self.max_record_bytes:
                    batch.errors[index] = (True, "payload too large: it " + record_too_large(
                        size, self.max_record_bytes))
                    stopped.add((row[1], row[2]))
                    continue
            isolate = suspects and row[9] in suspects
            callback = on_batch if exact is None else functools.partial(delivered, batch, index)
            if isolate:
                self.producer.flush(self.options.shutdown_timeout)  # nothing queued before it
                batch.isolated.add(index)
                callback = functools.partial(delivered, batch, index)
            while True:
                try:
                    produce(topic, value, row[2], headers=cast(Headers, headers),
                            timestamp=row[5], on_delivery=callback)
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

    def _batch_delivered(self, batch: Batch, err: KafkaError | None, msg: Message) -> None:
        # Kept small: it runs once per record. Latency is counted per batch at settle.
        batch.outstanding -= 1
        if err is not None:
            # Reports of failed records carry key and value, not headers: kept for
            # _attribute_failures.
            batch.failed_reports.append((msg.key(), msg.value(), is_permanent(err),
                                         f"delivery: {err.str()}"))
            batch.fatal = batch.fatal or err.fatal()

    def _attribute_failures(self, batch: Batch) -> None:
        """Trace failed delivery reports back to rows: every row with the report's key and
        value counts as failed (two identical records of one aggregate in one batch cannot
        be told apart; treating both as failed only sends one again). A transient error
        makes the batch be read again from the earliest of them, a permanent one makes
        each be retried alone (``suspects``) before anything is recorded: both exact."""
        # One pass over the batch (an outage fails every record of it): the rows of the
        # failed keys, by (key, value) as they were sent.
        failed_keys = {key for key, *_ in batch.failed_reports}
        rows_of: dict[tuple[bytes | None, bytes | None], list[int]] = {}
        for index, row in enumerate(batch.rows):
            sent_key = row[2].encode()
            if index in batch.isolated or sent_key not in failed_keys:
                continue
            sent_value = None if row[4] is None else compact_json(row[4]).encode()
            rows_of.setdefault((sent_key, sent_value), []).append(index)
        for key, value, permanent, message in batch.failed_reports:
            found = rows_of.get((key, value), [])
            for index in found:
                batch.errors.setdefault(index, (permanent, message))
            if not found:  # cannot happen; if it does, read the whole batch again
                log.error("a failed delivery report matches no row of its batch",
                          extra={"action": "unmatched_report"})
                for index in range(len(batch.rows)):
                    batch.errors.setdefault(index, (False, message))
        batch.failed_reports.clear()

    def _delivered(self, batch: Batch, index: int, err: KafkaError | None,
                   msg: Message) -> None:
        """The exact callback of a row produced alone (or of every row with ``on_ack``)."""
        batch.outstanding -= 1
        if err is not None:
            batch.errors[index] = (is_permanent(err), f"delivery: {err.str()}")
            batch.fatal = batch.fatal or err.fatal()
        elif self.on_ack is not None:
            self.on_ack(batch.rows[index][0], time.time())

    # ------------------------------------------------------------------ settle
    def _batches(self) -> list[Batch]:
        """Every batch not settled yet: producing or waiting for delivery reports."""
        return [b for b in self.in_flight if b is not None]

    def _group_busy(self, group: int) -> bool:
        return self.in_flight[group] is not None

    def _settle_completed(self) -> None:
        """Settle every batch whose delivery reports are all in; its group may claim again."""
        for group, batch in enumerate(self.in_flight):
            if batch is None or batch.outstanding > 0:
                continue
            self.in_flight[group] = None
            self.dirty[group] = True
            self._settle(batch)
        self._save_progress()

    def _settle(self, batch: Batch) -> None:
        """All delivery reports are in: record failures, then the progress they allow.

        Per aggregate, rows after its first failed row are not counted as delivered: behind
        a failure recorded on the row (which takes it off the fast path) they follow it off
        the fast path too; behind a transient failure (or a row retried alone, see
        ``suspects``) the window is read again from the earliest such row. Failures and
        holds are written before the progress that passes them, so a crash in between can
        only make the relay send rows again.
        """
        assert self.conn is not None
        if batch.failed_reports:
            self._attribute_failures(batch)
        self.spans.settled(batch, len(batch.errors))
        failed: dict[AggregateKey, bool] = {}  # aggregate -> its failed row was parked
        delivered: list[int] = []
        followers: list[Row] = []
        reread: int | None = None  # seq from which the window must be read again
        transient: list[str] = []
        delivered_created: list[int] = []  # created_at (epoch ms) of delivered rows
        if batch.rows:
            self.last_ack_at = time.monotonic()
        delivered_count = 0
        if not batch.errors:  # the common case: everything went through
            # (seqs only needed to clear suspects and to mark rows of the retry claim)
            delivered = ([row[9] for row in batch.rows]
                         if self.suspects or not batch.fast_path else [])
            delivered_count = len(batch.rows)
            # commit (created_at) -> acknowledged, as seen when the batch settles
            self.metrics.latency.observe_ages(time.time(), [row[5] for row in batch.rows])
        for index, row in enumerate(batch.rows if batch.errors else ()):
            key = (row[1], row[2])
            if key in failed:
                followers.append(row)
                continue
            error = batch.errors.get(index)
            if error is None:
                delivered.append(row[9])
                delivered_created.append(row[5])
                continue
            permanent, message = error
            if permanent and message.startswith("delivery:") and index not in batch.isolated:
                # Maybe a neighbour's fault: retry it alone first, uncounted.
                self.suspects.add(row[9])
                self.kafka_retry_at = max(self.kafka_retry_at,
                                          time.monotonic() + compute_backoff(1))
            elif permanent:
                self.suspects.discard(row[9])
                failed[key] = self._record_failure(row, message)
                continue
            else:
                transient.append(message)
            if batch.fast_path:
                reread = row[9] if reread is None else min(reread, row[9])
            failed[key] = False
        if batch.errors:
            delivered_count = len(delivered_created)
            self.metrics.latency.observe_ages(time.time(), delivered_created)
        if self.suspects:
            self.suspects.difference_update(delivered)
        if batch.fast_path:
            self._settle_window(batch, failed, followers, reread)
        else:
            if delivered:
                self.conn.execute(self.queries.mark_published, {"seqs": delivered})
            if failed:
                self.retry_due[batch.group] = True
            self._load_blocked([s for s in self.shards.owned if s % self.depth == batch.group])
        self.metrics.published.inc(delivered_count)
        self.published_total += delivered_count
        self._after_kafka_result(transient, delivered_count > 0)
        if batch.fatal:
            # A fatal idempotent-producer state (e.g. fenced epoch) cannot be retried on the
            # same producer: start a fresh one; unrecorded rows are simply read again.
            log.error("Kafka producer hit a fatal error; creating a new producer",
                      extra={"action": "producer_reset"})
            if self.producer is not None and not any(b.outstanding for b in self._batches()):
                self.producer = None

    def _settle_window(self, batch: Batch, failed: dict[AggregateKey, bool],
                       followers: list[Row], reread: int | None) -> None:
        assert self.conn is not None
        park = [r[9] for r in followers if failed[(r[1], r[2])]]
        wait = [r[9] for r in followers if not failed[(r[1], r[2])]
                and (reread is None or r[9] < reread)]
        self._hold(park, wait)
        window = self.windows[batch.group]
        assert window is not None
        settled = batch.read if reread is None else [r for r in batch.read if r[9] < reread]
        complete = reread is None and batch.ends_window
        changed = progress(self.cursors, window, {row[10] for row in settled},
                           settled[-1][9] if settled else None, complete)
        self.cursors.update(changed)
        self.unsaved.update(changed)
        if complete or reread is not None:
            self._close_window(batch.group)

    def _save_progress(self, force: bool = False) -> None:
        """Write the cursors that moved, at most every ``progress_interval`` unless forced.

        Reads go by the cursors in memory; the written ones are what a crash falls back to
        (the rows after them are sent again) and what ``outbox status`` and retention see.
        Forced before shards are released and at shutdown.
        """
        now = time.monotonic()
        if not self.unsaved or not (force or now >= self.next_save):
            return
        assert self.conn is not None
        changed, self.unsaved = self.unsaved, {}
        shards = sorted(changed)
        self.conn.execute(self.queries.save_cursors, {
            "shards": shards, "done": [changed[s].done for s in shards],
            "win": [changed[s].win for s in shards], "upto": [changed[s].upto for s in shards]})
        self.next_save = now + self.options.progress_interval

    def _after_kafka_result(self, transient: list[str], delivered: bool) -> None:
        if transient:
            self.metrics.delivery_errors.labels("transient").inc(len(transient))
            self.kafka_failures += 1
            self.health.kafka_ok = False
            delay = compute_backoff(self.kafka_failures)
            self.kafka_retry_at = time.monotonic() + delay
            log.warning("%d deliveries failed (%s), retrying in %.1fs", len(transient),
                        transient[0], delay,
                        extra={"action": "kafka_unavailable", "attempt": self.kafka_failures})
        elif delivered:
            if self.kafka_failures:
                log.info("Kafka deliveries succeed again", extra={"action": "kafka_recovered"})
            self.kafka_failures = 0
            self.health.kafka_ok = True

    def _record_failure(self, row: Row, message: str) -> bool:
        """Count a failed delivery on the row (taking it off the fast path); True if that
        parked it."""
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
                    extra={"action": "row_parked" if parked else "row_failed", "seq": seq,
                           **event_fields(row[0], row[2], row[8])})
        head = self.blocked.get(key)
        if head is None or seq <= head.seq:
            self.blocked[key] = Blocked(seq, row[10], parked)
        if parked:
            self.metrics.parked.inc()
        else:
            # Retry the row after a pause rather than at once: it just failed for good reason.
            self.retry_due[row[10] % self.depth] = True
            self.kafka_retry_at = max(self.kafka_retry_at, time.monotonic() + compute_backoff(
                row[11] + 1))
        return parked

    def _load_blocked(self, shards: list[int]) -> None:
        """Reload which aggregates of ``shards`` have rows off the fast path, undelivered."""
        assert self.conn is not None
        wanted = set(shards)
        self.blocked = {k: v for k, v in self.blocked.items() if v.shard not in wanted}
        if not shards:
            return
        for agg_type, agg_id, seq, shard, parked in self.conn.execute(
                self.queries.blocked_aggregates, {"shards": shards}).fetchall():
            self.blocked[(str(agg_type), str(agg_id))] = Blocked(int(seq), int(shard),
                                                                 bool(parked))

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
                    conn.execute(self.queries.listen)
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

    def _stats_loop(self) -> None:
        """Backlog and oldest pending age of the owned shards, on a connection of its own:
        counting a large backlog takes a while, and the loop has better things to do."""
        conn: psycopg.Connection[tuple[Any, ...]] | None = None
        app = f"outbox-relay-stats:{self.options.instance_id}"
        failures = 0
        # First figures half a second after start; then every stats_interval, and after a
        # failure with backoff (a database outage is logged by the loop already).
        while not self.stopping.wait(compute_backoff(failures) if failures
                                     else self.options.stats_interval if conn else 0.5):
            try:
                if conn is None:
                    conn = psycopg.connect(self.settings.libpq_url(), autocommit=True,
                                           application_name=app, connect_timeout=5)
                    prefer_index_scans(conn)
                count, age = read_backlog(conn, self.queries, list(self.owned_now))
                self.metrics.backlog.set(float(count))
                self.metrics.oldest_age.set(age if age is not None else 0.0)
                failures = 0
            except psycopg.Error as exc:
                failures += 1
                log.warning("backlog statistics failed: %s", first_line(exc),
                            extra={"action": "stats_failed", "attempt": failures})
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

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
