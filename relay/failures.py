"""The failure lane: rows that left the fast path, and the aggregates they hold back.

A row whose delivery failed for good reason gets the failure recorded on it
(``last_error``, ``attempts``; parked with ``failed_at`` at the limit), which takes it
off the fast path (the window reads skip it) and into the retry claim, sent one row at
a time and marked (``published_at``). Later rows of its aggregate must not overtake it:
behind a parked row they are parked too ("held back"); behind a row still being retried
they leave the fast path and follow it through the retry claim ("waiting").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox.logs import event_fields
from relay.metrics import RelayMetrics
from relay.queries import Queries
from relay.rows import (
    AGGREGATEID,
    AGGREGATETYPE,
    ID,
    SEQ,
    SHARD,
    TRACEPARENT,
    AggregateKey,
    Row,
)

log = logging.getLogger("outbox.relay")

HELD_BACK = ("held back: an earlier event of this aggregate failed; run `outbox relay "
             "retry-failed` after fixing it")
WAITING = "waiting: an earlier event of this aggregate is being retried"


@dataclass(frozen=True)
class Blocked:
    """An aggregate with an undelivered row off the fast path: its later rows wait."""

    seq: int  # its first such row
    shard: int
    parked: bool  # that row is parked (failed_at): later rows are parked too


class FailureLane:
    """The blocked aggregates of the owned shards and the statements that move rows off
    the fast path; every write goes through the loop's connection (the shards' session)."""

    def __init__(self, queries: Queries, metrics: RelayMetrics, max_attempts: int) -> None:
        self.queries = queries
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.blocked: dict[AggregateKey, Blocked] = {}
        # seqs whose delivery failed with a permanent error while sharing a produce request
        # with other records: the broker rejects a whole record batch (e.g. one record over
        # the topic's max.message.bytes), so the error may belong to a neighbour. Such a row
        # is retried alone before any attempt is counted against it.
        self.suspects: set[int] = set()

    def clear(self) -> None:
        """Forget everything (the session, and with it the shards, is gone)."""
        self.blocked.clear()

    def forget(self, shards: set[int]) -> None:
        """Forget the blocked aggregates of shards no longer owned."""
        self.blocked = {k: v for k, v in self.blocked.items() if v.shard not in shards}

    def load(self, conn: psycopg.Connection[tuple[Any, ...]], shards: list[int]) -> None:
        """Reload which aggregates of ``shards`` have rows off the fast path, undelivered."""
        self.forget(set(shards))
        if not shards:
            return
        for agg_type, agg_id, seq, shard, parked in conn.execute(
                self.queries.blocked_aggregates, {"shards": shards}).fetchall():
            self.blocked[(str(agg_type), str(agg_id))] = Blocked(int(seq), int(shard),
                                                                 bool(parked))

    def record(self, conn: psycopg.Connection[tuple[Any, ...]], row: Row,
               message: str) -> bool:
        """Count a failed delivery on the row (taking it off the fast path); True if that
        parked it."""
        seq = row[SEQ]
        self.suspects.discard(seq)
        self.metrics.delivery_errors.labels("permanent").inc()
        result = conn.execute(self.queries.record_failure, {
            "seq": seq, "error": message[:2000], "max_attempts": self.max_attempts,
        }).fetchone()
        parked = bool(result and result[0])
        key = (row[AGGREGATETYPE], row[AGGREGATEID])
        log.warning("event %s (%s %s) failed: %s%s", row[ID], key[0], key[1], message,
                    " - parked" if parked else "",
                    extra={"action": "row_parked" if parked else "row_failed", "seq": seq,
                           **event_fields(row[ID], row[AGGREGATEID], row[TRACEPARENT])})
        head = self.blocked.get(key)
        if head is None or seq <= head.seq:
            self.blocked[key] = Blocked(seq, row[SHARD], parked)
        if parked:
            self.metrics.parked.inc()
        return parked

    def divert(self, rows: list[Row], fast_path: bool) -> tuple[list[Row], list[int], list[int]]:
        """Split rows of aggregates with an undelivered earlier failure off the batch:
        (rows to produce, seqs to park, seqs to take off the fast path), see :meth:`hold`.

        Behind a parked row they are parked too; behind a row that is still being retried
        they leave the fast path and follow it through the retry claim.
        """
        if not self.blocked:
            return rows, [], []
        keep: list[Row] = []
        park: list[int] = []
        wait: list[int] = []
        for row in rows:
            key = (row[AGGREGATETYPE], row[AGGREGATEID])
            head = self.blocked.get(key)
            if head is None:
                keep.append(row)
            elif not fast_path and row[SEQ] <= head.seq:
                # The parked head itself is back (outbox relay retry-failed): retry it.
                self.blocked[key] = Blocked(row[SEQ], row[SHARD], parked=False)
                keep.append(row)
            elif head.parked:
                park.append(row[SEQ])
            elif fast_path:
                wait.append(row[SEQ])
            else:
                keep.append(row)  # a follower of a retried head: in order behind it
        return keep, park, wait

    def hold(self, conn: psycopg.Connection[tuple[Any, ...]], park: list[int],
             wait: list[int]) -> None:
        """Park ``park`` (behind a parked row) and take ``wait`` off the fast path (behind a
        row being retried: the retry claim finds them)."""
        if park:
            conn.execute(self.queries.hold_back, {"seqs": park, "error": HELD_BACK})
            self.metrics.parked.inc(len(park))
            log.warning("held back %d rows behind failed rows of their aggregates", len(park),
                        extra={"action": "rows_held_back", "rows": len(park)})
        if wait:
            conn.execute(self.queries.hold_waiting, {"seqs": wait, "error": WAITING})
