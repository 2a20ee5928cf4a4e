"""Applying a batch in the database: the fast path, and the careful path that isolates a
failure.

The fast path takes the common case in few round trips: one inbox insert for the whole
batch, then the handlers with no savepoint per message, one commit. Anything not plain
sailing (a message whose verdict is a failure, a handler that raises) rolls it back as a
whole, and the careful path applies it again with a savepoint per message: everything
before the first failure commits, the failure is handed back to the caller (which retries
or dead-letters it).

A lost database connection is never a message's fault: it raises
:class:`~consumers.errors.Rewind` with a backoff, and so does a COMMIT that fails when no
single message can be blamed.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from consumers.dlq import Failure
from consumers.errors import Rewind, is_connection_lost, is_transient
from consumers.handlers import call_handler
from consumers.health import ConsumerHealth
from consumers.inbox import InboxStore
from consumers.message import Received
from consumers.metrics import ConsumerMetrics
from consumers.options import ConsumerOptions
from consumers.routing import Routed, Verdict
from outbox.backoff import compute_backoff

log = logging.getLogger("outbox.consumer")

Item = tuple[Received, Verdict]
Position = tuple[str, int, int]  # topic, partition, offset


def position(msg: Received) -> Position:
    """Where ``msg`` sits: (topic, partition, offset)."""
    return (msg.topic, msg.partition, msg.offset)


class BatchApplier:
    """Runs handlers and inbox inserts of one consumer group in database transactions."""

    def __init__(self, engine: Engine, inbox: InboxStore, group: str,
                 options: ConsumerOptions, metrics: ConsumerMetrics,
                 health: ConsumerHealth) -> None:
        self.engine = engine
        self.inbox = inbox
        self.group = group
        self.options = options
        self.metrics = metrics
        self.health = health
        self.attempts: dict[Position, int] = {}  # handler failures so far, per message
        self.commit_failures = 0

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt``."""
        return compute_backoff(attempt, base=self.options.backoff_base,
                               cap=self.options.backoff_cap)

    def forget(self, msg: Received) -> None:
        """``msg`` is settled (dead-lettered): drop its attempt count."""
        self.attempts.pop(position(msg), None)

    def forget_partitions(self, gone: set[tuple[str, int]]) -> None:
        """Partitions revoked from us: their attempt counts go with them."""
        self.attempts = {k: v for k, v in self.attempts.items() if (k[0], k[1]) not in gone}

    def fast(self, items: list[Item]) -> bool:
        """Apply all of ``items`` in one transaction; False (nothing changed) if one of
        them needs the careful path."""
        routed: list[Routed] = []
        for _msg, verdict in items:
            if not isinstance(verdict, Routed):
                return False
            routed.append(verdict)
        dedupe = self.options.dedupe
        started = time.perf_counter()
        handled = duplicates = 0
        try:
            with Session(self.engine) as session, session.begin():
                events = [r.event for r in routed]
                fresh = (self.inbox.claim_many(session, self.group, events) if dedupe
                         else {e.id for e in events})
                for r in routed:
                    if r.event.id not in fresh:
                        duplicates += 1
                        continue
                    if dedupe:
                        fresh.discard(r.event.id)  # the same id twice in one batch: apply once
                    call_handler(r.registration.handler, session, r.event)
                    handled += 1
                _crash_after_commit_hook(session)
        except Exception as exc:
            if is_connection_lost(exc):
                raise self._database_lost(exc) from exc
            return False  # rolled back as a whole; the careful path finds the culprit
        self.health.db_failures = 0
        self.metrics.handled.inc(handled)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return True

    def careful(self, items: list[Item]) -> tuple[int, tuple[Received, Failure] | None]:
        """Apply the longest prefix of ``items`` that succeeds, in one transaction.

        Returns how many were applied (committed) and the first one that failed, with
        why; that one is not settled: the caller retries or dead-letters it.
        """
        applied = 0
        failed: tuple[Received, Failure] | None = None
        started = time.perf_counter()
        try:
            with Session(self.engine) as session, session.begin():
                for msg, verdict in items:
                    failure = self._apply_one(session, msg, verdict)
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
            delay = self.backoff(self.commit_failures)
            log.error("batch commit failed (%s), retrying in %.1fs: %s",
                      "transient" if is_transient(exc) else type(exc).__name__, delay,
                      str(exc).splitlines()[0] if str(exc) else "",
                      extra={"action": "batch_commit_failed"})
            raise Rewind(delay) from exc
        self.commit_failures = 0
        self.health.db_failures = 0
        if applied:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return applied, failed

    def _apply_one(self, session: Session, msg: Received, verdict: Verdict) -> Failure | None:
        if not isinstance(verdict, Routed):
            return verdict
        event, where = verdict.event, position(msg)
        started = time.perf_counter()
        try:
            with session.begin_nested():
                if self.options.dedupe and not self.inbox.claim(session, self.group, event):
                    self.metrics.duplicates.inc()
                    return None
                call_handler(verdict.registration.handler, session, event)
        except Exception as exc:
            if is_connection_lost(exc):
                raise
            attempts = self.attempts.get(where, 0) + 1
            self.attempts[where] = attempts
            return Failure("handler-failed", exc, attempts)
        self.metrics.handled.inc()
        self.metrics.handler_seconds.observe(time.perf_counter() - started)
        self.attempts.pop(where, None)
        return None

    def _database_lost(self, exc: Exception) -> Rewind:
        """Count the outage and say how long to wait; the batch is consumed again later."""
        self.health.db_failures += 1
        delay = self.backoff(self.health.db_failures)
        log.warning("database unavailable, retrying in %.1fs: %s", delay,
                    str(exc).splitlines()[0], extra={"action": "db_unavailable"})
        return Rewind(delay)


def _crash_after_commit_hook(session: Session) -> None:
    """Test hook (OUTBOX_TEST_CRASH_AFTER_DB_COMMIT): commit, then die before the offset."""
    if os.environ.get("OUTBOX_TEST_CRASH_AFTER_DB_COMMIT"):
        session.commit()
        os.kill(os.getpid(), signal.SIGKILL)
