"""What a produced batch's delivery reports mean: which rows count as delivered.

Pure: nothing here talks to Kafka or PostgreSQL, so the rules are property-tested on their
own (tests/relay/test_delivery.py). The loop (relay.loop) produces a :class:`Batch`
(relay.produce), waits for its reports, then :func:`classify` says what to record.

Per aggregate, rows after its first failed row do not count as delivered, whatever Kafka
said about them: behind a permanent failure (recorded on the row, which takes it off the
fast path) they follow it off the fast path; behind a transient failure the window is read
again from the earliest such row (rows Kafka did accept after it are sent again:
duplicates, never a gap or an overtaking). A permanent *delivery* error of a row that
shared a produce request with others may be a neighbour's (the broker rejects a whole
record batch), so that row is a *suspect*: retried alone before anything counts against it.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import NamedTuple

from outbox.record import compact_json
from relay.rows import AGGREGATEID, AGGREGATETYPE, PAYLOAD, POSITION, AggregateKey, Row

log = logging.getLogger("outbox.relay")


class Stage(enum.Enum):
    """Where a row failed."""

    TOPIC = "topic"  # its topic name is one Kafka refuses (never produced)
    SIZE = "size"  # the record is over the size limit (never produced)
    PRODUCE = "produce"  # produce() refused it
    DELIVERY = "delivery"  # the broker's delivery report


class Failure(NamedTuple):
    """Why one row of a batch failed."""

    stage: Stage
    permanent: bool  # retrying the same record cannot help (relay.producer.is_permanent)
    message: str


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
    # settled: every row of its window is delivered (relay.settle)
    completes_window: bool = False
    outstanding: int = 0
    # row index -> why it failed: a refused row, a failed produce() or a failed delivery
    errors: dict[int, Failure] = field(default_factory=dict)
    # indexes of rows produced alone (suspects), so their errors are their own
    isolated: set[int] = field(default_factory=set)
    # (key, value, permanent?, message) of failed reports of the batch's shared callback
    failed_reports: list[tuple[bytes | None, bytes | None, bool, str]] = field(
        default_factory=list)
    fatal: bool = False
    # the partitions its records were appended to, collected only for a traced batch
    # (None: not collected), so its send span can name the one partition they share
    partitions: set[int] | None = None


@dataclass
class Outcome:
    """What a settled batch means, row by row (every row is in exactly one list)."""

    # rows delivered and counted (batch.rows itself when nothing failed)
    delivered: list[Row]
    # the first failed row of each aggregate whose failure is recorded on the row
    failures: list[tuple[Row, str]] = field(default_factory=list)
    # first failed rows to retry alone before anything is counted (see module docstring)
    suspects: list[Row] = field(default_factory=list)
    # first failed rows of a transient failure, and the failures' messages
    transient: list[Row] = field(default_factory=list)
    transient_messages: list[str] = field(default_factory=list)
    # rows after their aggregate's first failed row
    followers: list[Row] = field(default_factory=list)
    # aggregate -> True if its first failed row's failure is recorded (``failures``)
    heads: dict[AggregateKey, bool] = field(default_factory=dict)
    # fast path: position (shard, seq) from which the window must be read again (a
    # transient failure or a suspect; relay.window), None if none
    reread: tuple[int, int] | None = None


def classify(batch: Batch) -> Outcome:
    """The rows of a batch whose reports are all in (and attributed: see
    :func:`attribute_failures`), sorted by what happened to them."""
    if not batch.errors:  # the common case: everything went through
        return Outcome(delivered=batch.rows)
    out = Outcome(delivered=[])
    heads = out.heads
    for index, row in enumerate(batch.rows):
        key = (row[AGGREGATETYPE], row[AGGREGATEID])
        if key in heads:
            out.followers.append(row)
            continue
        error = batch.errors.get(index)
        if error is None:
            out.delivered.append(row)
            continue
        if error.permanent and error.stage is Stage.DELIVERY and index not in batch.isolated:
            out.suspects.append(row)
        elif error.permanent:
            out.failures.append((row, error.message))
            heads[key] = True
            continue
        else:
            out.transient.append(row)
            out.transient_messages.append(error.message)
        if batch.fast_path:
            position = POSITION(row)
            out.reread = position if out.reread is None else min(out.reread, position)
        heads[key] = False
    return out


def attribute_failures(batch: Batch) -> None:
    """Trace failed delivery reports back to rows: every row with the report's key and
    value counts as failed (two identical records of one aggregate in one batch cannot
    be told apart; treating both as failed only sends one again). A transient error
    makes the batch be read again from the earliest of them, a permanent one makes
    each be retried alone (suspects) before anything is recorded: both exact."""
    # One pass over the batch (an outage fails every record of it): the rows of the
    # failed keys, by (key, value) as they were sent.
    failed_keys = {key for key, *_ in batch.failed_reports}
    rows_of: dict[tuple[bytes | None, bytes | None], list[int]] = {}
    for index, row in enumerate(batch.rows):
        sent_key = row[AGGREGATEID].encode()
        if index in batch.isolated or sent_key not in failed_keys:
            continue
        payload = row[PAYLOAD]
        sent_value = None if payload is None else compact_json(payload).encode()
        rows_of.setdefault((sent_key, sent_value), []).append(index)
    for key, value, permanent, message in batch.failed_reports:
        found = rows_of.get((key, value), [])
        for index in found:
            batch.errors.setdefault(index, Failure(Stage.DELIVERY, permanent, message))
        if not found:  # cannot happen; if it does, read the whole batch again
            log.error("a failed delivery report matches no row of its batch",
                      extra={"action": "unmatched_report"})
            for index in range(len(batch.rows)):
                batch.errors.setdefault(index, Failure(Stage.DELIVERY, False, message))
    batch.failed_reports.clear()
