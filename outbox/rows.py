"""The one owner of a stored row's record columns: what each of its first ten columns holds.

A stored row (:class:`outbox.record.StoredRow`, and the first ten columns of every row
the relay reads: ``relay.rows`` adds its bookkeeping after them) is read as a plain tuple
on the hot path (building a named tuple or an object per row costs CPU), so a column is
read by index, and the indexes are named here. :data:`RECORD_COLUMNS` selects exactly
these columns in this order.
"""

from __future__ import annotations

from typing import Final

# The id and the payload as text (the record needs text; a UUID object or json.loads per
# row costs CPU), created_at as the record's epoch milliseconds (computed by PostgreSQL:
# exact).
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

RECORD_FIELDS: Final = ("id", "aggregatetype", "aggregateid", "type", "payload", "created_ms",
                        "correlation_id", "causation_id", "traceparent", "tracestate")

# The record's columns over an outbox row ``o``, as the relay's statements and replay
# write them (benchmarks read rows the same way).
RECORD_COLUMNS: Final = ("o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text, "
                         "floor(extract(epoch from o.created_at) * 1000)::int8, "
                         "o.correlation_id, o.causation_id, o.traceparent, o.tracestate")

__all__ = ["AGGREGATEID", "AGGREGATETYPE", "CAUSATION_ID", "CORRELATION_ID", "CREATED_MS", "ID",
           "PAYLOAD", "RECORD_COLUMNS", "RECORD_FIELDS", "TRACEPARENT", "TRACESTATE", "TYPE"]
