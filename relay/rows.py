"""The one owner of the relay's row layout: what each column of a relayed row holds.

The relay reads rows as plain tuples (psycopg's default: building a named tuple or an
object per row costs CPU on the hot path), so a column is read by index, and the indexes
are named here and nowhere else. The statements that return rows (``relay/relay.sql``:
``first_window_batch``, ``declare_window``, ``claim_retry``) select exactly these columns
in this order; the first ten are :class:`outbox.record.StoredRow`'s.
"""

from __future__ import annotations

from typing import Final

# The record's columns (outbox.record.StoredRow): the id and the payload as text (the
# record needs text; a UUID object or json.loads per row costs CPU), created_at as the
# record's epoch milliseconds (computed by PostgreSQL: exact).
ID: Final = 0
AGGREGATETYPE: Final = 1
AGGREGATEID: Final = 2
TYPE: Final = 3
PAYLOAD: Final = 4
CREATED_MS: Final = 5
CORRELATION_ID: Final = 6
CAUSATION_ID: Final = 7
TRACEPARENT: Final = 8
TRACESTATE: Final = 9  # schema version 6
# The relay's bookkeeping.
SEQ: Final = 10
SHARD: Final = 11
ATTEMPTS: Final = 12

COLUMNS: Final = ("id", "aggregatetype", "aggregateid", "type", "payload", "created_ms",
                  "correlation_id", "causation_id", "traceparent", "tracestate", "seq", "shard",
                  "attempts")

# A row as the relay reads it (see the constants above).
Row = tuple[str, str, str, str, str | None, int, str | None, str | None, str | None, str | None,
            int, int, int]
# (aggregatetype, aggregateid): what per-aggregate order is about.
AggregateKey = tuple[str, str]

# The record's columns over an outbox row ``o``, as the statements write them
# (benchmarks read rows the same way).
RECORD_COLUMNS: Final = ("o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text, "
                         "floor(extract(epoch from o.created_at) * 1000)::int8, "
                         "o.correlation_id, o.causation_id, o.traceparent, o.tracestate")
ROW_COLUMNS: Final = RECORD_COLUMNS + ", o.seq, o.shard, o.attempts"


def aggregate(row: Row) -> AggregateKey:
    """The row's aggregate."""
    return (row[AGGREGATETYPE], row[AGGREGATEID])
