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

Each path exists twice, as a function and as a coroutine (``fast``/``fast_async``,
``careful``/``careful_async``): a consumer with an ``async def`` handler runs its
transactions on the async engine, where its sync handlers are called through
``AsyncSession.run_sync`` in the same transaction. The twins differ only in ``await``;
what they decide (dedupe, attempt counts, metrics, outages) is shared.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from consumers.dlq import Failure
from consumers.errors import Rewind, is_connection_lost, is_transient
from consumers.handlers import call_async, call_sync
from consumers.health import ConsumerHealth
from consumers.inbox import InboxStore, InboxUnusableError
from consumers.message import Received
from consumers.metrics import ConsumerMetrics
from consumers.options import ConsumerOptions
from consumers.routing import Routed, Verdict
from outbox.backoff import compute_backoff
from outbox.settings import Settings

log = logging.getLogger("outbox.consumer")

Item = tuple[Received, Verdict]
Position = tuple[str, int, int]  # topic, partition, offset


def position(msg: Received) -> Position:
    """Where ``msg`` sits: (topic, partition, offset)."""
    return (msg.topic, msg.partition, msg.offset)


class BatchApplier:
    """Runs handlers and inbox inserts of one consumer group in database transactions.

    ``sessions`` / ``async_sessions`` open the batch's session (on the engines by default;
    :mod:`outbox.testing` binds them to a transaction it rolls back).
    """

    def __init__(self, engine: Engine, inbox: InboxStore, group: str,
                 options: ConsumerOptions, metrics: ConsumerMetrics,
                 health: ConsumerHealth, settings: Settings | None = None) -> None:
        self.engine = engine
        self.sessions: Callable[[], Session] = lambda: Session(engine)
        self.async_sessions: Callable[[], AsyncSession] | None = None
        self.inbox = inbox
        self.group = group
        self.options = options
        self.metrics = metrics
        self.health = health
        self.settings = settings or Settings()
        self.attempts: dict[Position, int] = {}  # handler failures so far, per message
        self.commit_failures = 0

    def use_async_engine(self, engine: AsyncEngine) -> None:
        """Open async batches on ``engine``."""
        self.async_sessions = lambda: AsyncSession(engine)

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

    # ------------------------------------------------------------------ the fast path
    def fast(self, items: list[Item]) -> bool:
        """Apply all of ``items`` in one transaction; False (nothing changed) if one of
        them needs the careful path."""
        routed = _all_routed(items)
        if routed is None:
            return False
        started = time.perf_counter()
        try:
            with self.sessions() as session, session.begin():
                fresh, duplicates = self._fresh(session, routed)
                for r in fresh:
                    call_sync(r.registration, session, r.event, r.value, self.settings)
                _crash_after_commit_hook(session)
        except Exception as exc:
            return self._fast_failed(exc)
        self._fast_done(len(fresh), duplicates, started)
        return True

    async def fast_async(self, items: list[Item]) -> bool:
        """:meth:`fast` on the async engine."""
        assert self.async_sessions is not None
        routed = _all_routed(items)
        if routed is None:
            return False
        started = time.perf_counter()
        try:
            async with self.async_sessions() as session, session.begin():
                fresh, duplicates = await session.run_sync(self._fresh, routed)
                for r in fresh:
                    await call_async(r.registration, session, r.event, r.value, self.settings)
                await session.run_sync(_crash_after_commit_hook)
        except Exception as exc:
            return self._fast_failed(exc)
        self._fast_done(len(fresh), duplicates, started)
        return True

    def _fresh(self, session: Session, routed: list[Routed]) -> tuple[list[Routed], int]:
        """The events of ``routed`` this group has not applied yet (their inbox rows
        inserted in one statement), and how many were duplicates."""
        if not self.options.dedupe:
            return routed, 0
        new = self.inbox.claim_many(session, self.group, [r.event for r in routed])
        fresh: list[Routed] = []
        for r in routed:
            if r.event.id in new:
                new.discard(r.event.id)  # the same id twice in one batch: apply once
                fresh.append(r)
        return fresh, len(routed) - len(fresh)

    def _fast_failed(self, exc: Exception) -> bool:
        if isinstance(exc, InboxUnusableError):
            raise exc  # the consumer's configuration: it stops (exit 3), nothing settled
        if is_connection_lost(exc):
            raise self._database_lost(exc) from exc
        return False  # rolled back as a whole; the careful path finds the culprit

    def _fast_done(self, handled: int, duplicates: int, started: float) -> None:
        self.health.db_failures = 0
        self.metrics.handled.inc(handled)
        self.metrics.duplicates.inc(duplicates)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ the careful path
    def careful(self, items: list[Item]) -> tuple[int, tuple[Received, Failure] | None]:
        """Apply the longest prefix of ``items`` that succeeds, in one transaction.

        Returns how many were applied (committed) and the first one that failed, with
        why; that one is not settled: the caller retries or dead-letters it.
        """
        applied = 0
        failed: tuple[Received, Failure] | None = None
        started = time.perf_counter()
        try:
            with self.sessions() as session, session.begin():
                for msg, verdict in items:
                    failure = self._apply_one(session, msg, verdict)
                    if failure is not None:
                        failed = (msg, failure)
                        break
                    applied += 1
                if applied:
                    _crash_after_commit_hook(session)
        except Exception as exc:
            raise self._careful_failed(exc) from exc
        return self._careful_done(applied, failed, started)

    async def careful_async(self, items: list[Item]
                            ) -> tuple[int, tuple[Received, Failure] | None]:
        """:meth:`careful` on the async engine."""
        assert self.async_sessions is not None
        applied = 0
        failed: tuple[Received, Failure] | None = None
        started = time.perf_counter()
        try:
            async with self.async_sessions() as session, session.begin():
                for msg, verdict in items:
                    failure = await self._apply_one_async(session, msg, verdict)
                    if failure is not None:
                        failed = (msg, failure)
                        break
                    applied += 1
                if applied:
                    await session.run_sync(_crash_after_commit_hook)
        except Exception as exc:
            raise self._careful_failed(exc) from exc
        return self._careful_done(applied, failed, started)

    def _apply_one(self, session: Session, msg: Received, verdict: Verdict) -> Failure | None:
        if not isinstance(verdict, Routed):
            return verdict
        started = time.perf_counter()
        try:
            with session.begin_nested():
                if self.options.dedupe and not self.inbox.claim(session, self.group,
                                                                verdict.event):
                    self.metrics.duplicates.inc()
                    return None
                call_sync(verdict.registration, session, verdict.event, verdict.value,
                          self.settings)
        except Exception as exc:
            return self._handler_failed(exc, msg)
        self._handled(msg, started)
        return None

    async def _apply_one_async(self, session: AsyncSession, msg: Received,
                               verdict: Verdict) -> Failure | None:
        if not isinstance(verdict, Routed):
            return verdict
        started = time.perf_counter()
        try:
            async with session.begin_nested():
                if self.options.dedupe and not await session.run_sync(
                        self.inbox.claim, self.group, verdict.event):
                    self.metrics.duplicates.inc()
                    return None
                await call_async(verdict.registration, session, verdict.event, verdict.value,
                                 self.settings)
        except Exception as exc:
            return self._handler_failed(exc, msg)
        self._handled(msg, started)
        return None

    def _handler_failed(self, exc: Exception, msg: Received) -> Failure:
        if is_connection_lost(exc) or isinstance(exc, InboxUnusableError):
            raise exc
        where = position(msg)
        attempts = self.attempts.get(where, 0) + 1
        self.attempts[where] = attempts
        return Failure("handler-failed", exc, attempts)

    def _handled(self, msg: Received, started: float) -> None:
        self.metrics.handled.inc()
        self.metrics.handler_seconds.observe(time.perf_counter() - started)
        self.attempts.pop(position(msg), None)

    def _careful_failed(self, exc: Exception) -> Rewind:
        if isinstance(exc, InboxUnusableError):
            raise exc
        if is_connection_lost(exc):
            return self._database_lost(exc)
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
        return Rewind(delay)

    def _careful_done(self, applied: int, failed: tuple[Received, Failure] | None,
                      started: float) -> tuple[int, tuple[Received, Failure] | None]:
        self.commit_failures = 0
        self.health.db_failures = 0
        if applied:
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return applied, failed

    def _database_lost(self, exc: Exception) -> Rewind:
        """Count the outage and say how long to wait; the batch is consumed again later."""
        self.health.db_failures += 1
        delay = self.backoff(self.health.db_failures)
        log.warning("database unavailable, retrying in %.1fs: %s", delay,
                    str(exc).splitlines()[0], extra={"action": "db_unavailable"})
        return Rewind(delay)


def _all_routed(items: list[Item]) -> list[Routed] | None:
    """The verdicts of ``items`` if every one is routed to a handler, else None."""
    routed: list[Routed] = []
    for _msg, verdict in items:
        if not isinstance(verdict, Routed):
            return None
        routed.append(verdict)
    return routed


def _crash_after_commit_hook(session: Session) -> None:
    """Test hook (OUTBOX_TEST_CRASH_AFTER_DB_COMMIT): commit, then die before the offset."""
    if os.environ.get("OUTBOX_TEST_CRASH_AFTER_DB_COMMIT"):
        session.commit()
        os.kill(os.getpid(), signal.SIGKILL)
