"""The one owner of the relay's row layout: what each column of a relayed row holds.

The relay reads rows as plain tuples (psycopg's default: building a named tuple or an
object per row costs CPU on the hot path), so a column is read by index, and the indexes
are named here and nowhere else. The statements that return rows (``relay/relay.sql``:
``first_window_batch``, ``declare_window``, ``claim_retry``) select exactly these columns
in this order. The first ten are the record's, :class:`outbox.record.StoredRow`'s, owned
by :mod:`outbox.rows` and re-exported here; the relay's bookkeeping follows them.
"""

from __future__ import annotations

import operator
from typing import Final

from outbox.rows import (
    AGGREGATEID,
    AGGREGATETYPE,
    CAUSATION_ID,
    CORRELATION_ID,
    CREATED_MS,
    ID,
    PAYLOAD,
    RECORD_COLUMNS,
    RECORD_FIELDS,
    TRACEPARENT,
    TRACESTATE,
    TYPE,
)

# The relay's bookkeeping, after the record's columns (outbox.rows).
SEQ: Final = 10
SHARD: Final = 11
ATTEMPTS: Final = 12

COLUMNS: Final = (*RECORD_FIELDS, "seq", "shard", "attempts")

# first_window_batch returns each row's columns, then the statement's snapshot (the window
# of shards that had none).
WINDOW_SNAPSHOT: Final = len(COLUMNS)

# A row as the relay reads it (see the constants above).
Row = tuple[str, str, str, str, str | None, int, str | None, str | None, str | None, str | None,
            int, int, int]
# (aggregatetype, aggregateid): what per-aggregate order is about.
AggregateKey = tuple[str, str]

# The columns of a relayed row over an outbox row ``o``, as the statements write them.
ROW_COLUMNS: Final = RECORD_COLUMNS + ", o.seq, o.shard, o.attempts"


# A row's seq, as a sort key: the order the events were written (batches are in a window's
# stream order, shard then seq: relay.window).
BY_SEQ: Final = operator.itemgetter(SEQ)
# A row's position in that stream order, (shard, seq) (C-level: taken of every row read).
POSITION: Final = operator.itemgetter(SHARD, SEQ)


def aggregate(row: Row) -> AggregateKey:
    """The row's aggregate."""
    return (row[AGGREGATETYPE], row[AGGREGATEID])


__all__ = ["AGGREGATEID", "AGGREGATETYPE", "ATTEMPTS", "BY_SEQ", "CAUSATION_ID", "COLUMNS",
           "CORRELATION_ID", "CREATED_MS", "ID", "PAYLOAD", "POSITION", "RECORD_COLUMNS",
           "ROW_COLUMNS", "SEQ", "SHARD", "TRACEPARENT", "TRACESTATE", "TYPE", "WINDOW_SNAPSHOT",
           "AggregateKey", "Row", "aggregate"]
