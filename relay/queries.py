"""Every SQL statement the relay, ``outbox status`` and ``outbox purge`` send.

One place for SQL, as in procrastinate's ``manager.py``. Table and schema names come from
:class:`outbox.settings.Settings`, which accepts only plain identifiers, so formatting them
into the text is safe; values are always bound parameters.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE
from outbox.settings import Settings, check_identifier

# The columns of outbox.record.StoredRow, in its order, then the relay's bookkeeping (seq,
# shard, attempts), over a row ``o``. Nothing is parsed in Python: the id and the payload
# come as text (the record needs text; a UUID object or json.loads per row costs CPU) and
# created_at as the record's epoch milliseconds (numeric in PostgreSQL: exact).
RECORD_COLUMNS = ("o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text, "
                  "floor(extract(epoch from o.created_at) * 1000)::int8, "
                  "o.correlation_id, o.causation_id, o.traceparent")
ROW_COLUMNS = RECORD_COLUMNS + ", o.seq, o.shard, o.attempts"
# What the inner scans read for ROW_COLUMNS.
_RAW = ("id, aggregatetype, aggregateid, type, payload, created_at, correlation_id, "
        "causation_id, traceparent, seq, shard, attempts")
NOW_UTC = "(now() at time zone 'utc')"
APPLICATION_PREFIX = "outbox-relay"


@dataclass(frozen=True)
class Queries:
    """The SQL for one outbox table."""

    schema: str
    table: str

    @classmethod
    def for_settings(cls, settings: Settings) -> Queries:
        return cls(check_identifier(settings.db_schema, "schema name"),
                   check_identifier(settings.outbox_table, "outbox table name"))

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes relays of this table."""
        return f"outbox_{self.schema}_{self.table}"[:63]

    @property
    def application_name(self) -> str:
        """Prefix of relay sessions' application_name, per table (to count live relays)."""
        return f"{APPLICATION_PREFIX}:{self.qualified}"[:50]

    # ------------------------------------------------------------------ the relay
    @property
    def claim(self) -> str:
        """Pending rows of the given shards, each shard in seq order, at most %(limit)s.

        One LATERAL index scan per shard on ``ix_<table>_pending (shard, seq)`` instead of
        one ``order by seq`` over all shards: a large backlog is never sorted, and the scan
        stops as soon as the limit is reached. Per-aggregate order only needs per-shard seq
        order, since an aggregate always lives in one shard.
        """
        return (
            f"select {ROW_COLUMNS} "
            "from unnest(%(shards)s::smallint[]) with ordinality as s(shard, n) "
            f"cross join lateral (select {_RAW} from {self.qualified} "
            "  where shard = s.shard and published_at is null and failed_at is null "
            "  order by seq limit %(limit)s) as o "
            "limit %(limit)s")

    @property
    def claim_small(self) -> str:
        """Pending rows of the given shards in seq order, for when the backlog is small.

        One index scan over ``ix_<table>_pending`` (which holds only pending rows) and a sort
        of what it finds: far cheaper than one LATERAL probe per shard when a few rows
        arrive at a time, but it sorts the whole backlog of those shards, so the relay only
        uses it after a claim that came back less than full. ``offset 0`` keeps the planner
        from walking the ``seq`` index instead, through every published row.
        """
        return (
            f"select {ROW_COLUMNS} from (select {_RAW} from {self.qualified} "
            "  where shard = any(%(shards)s::smallint[]) and published_at is null "
            "  and failed_at is null offset 0) as o "
            "order by o.seq limit %(limit)s")

    @property
    def mark_published(self) -> str:
        return (f"update {self.qualified} set published_at = {NOW_UTC} "
                "where seq = any(%(seqs)s) and published_at is null")

    @property
    def delete_published(self) -> str:
        """Retention 0: a delivered row is deleted instead of marked (no new row version, no
        index entries: about a third of the mark's cost), leaving nothing to replay."""
        return (f"delete from {self.qualified} "
                "where seq = any(%(seqs)s) and published_at is null")

    @property
    def record_failure(self) -> str:
        """One failed delivery: count it, keep the error, park the row at the limit."""
        return (f"update {self.qualified} set attempts = attempts + 1, last_error = %(error)s, "
                f"failed_at = case when attempts + 1 >= %(max_attempts)s then {NOW_UTC} end "
                "where seq = %(seq)s and published_at is null returning failed_at is not null")

    @property
    def hold_back(self) -> str:
        """Park rows whose aggregate has an earlier failed row (they must not overtake it)."""
        return (f"update {self.qualified} set failed_at = {NOW_UTC}, last_error = %(error)s "
                "where seq = any(%(seqs)s) and published_at is null")

    @property
    def blocked_aggregates(self) -> str:
        """(aggregatetype, aggregateid, first parked seq, shard) of parked rows in these shards."""
        return (f"select aggregatetype, aggregateid, min(seq), min(shard) from {self.qualified} "
                "where shard = any(%(shards)s::smallint[]) and failed_at is not null "
                "and published_at is null group by aggregatetype, aggregateid")

    # ------------------------------------------------------------------ shards
    @property
    def table_key(self) -> int:
        """23 bits naming this outbox table, so relays of *other* outbox tables in the same
        database (one per service schema, say) never compete for this table's shards."""
        return zlib.crc32(self.qualified.encode()) & 0x7FFFFF

    def _shard_key(self) -> str:
        # Second key of the two-key lock: table key in the high bits, shard in the low 8.
        return f"({self.table_key << 8} | %(shard)s)"

    @property
    def shard_lock(self) -> str:
        return f"select pg_try_advisory_lock({RELAY_SHARD_LOCK_NAMESPACE}, {self._shard_key()})"

    @property
    def shard_unlock(self) -> str:
        return f"select pg_advisory_unlock({RELAY_SHARD_LOCK_NAMESPACE}, {self._shard_key()})"

    @property
    def live_relays(self) -> str:
        """Relay sessions of this table connected to this database, this one included."""
        return ("select count(distinct application_name) from pg_stat_activity "
                "where datname = current_database() and application_name like %(pattern)s")

    @property
    def logical_slots(self) -> str:
        """Logical replication slots of this database (Debezium's, with CDC)."""
        return ("select count(*) from pg_replication_slots "
                "where slot_type = 'logical' and database = current_database()")

    @property
    def shard_owners(self) -> str:
        """Every held shard lock of this table's relays: (shard, pid, application_name)."""
        return ("select (l.objid::bigint & 255)::int, l.pid, "
                "coalesce(a.application_name, '') "
                "from pg_locks l left join pg_stat_activity a on a.pid = l.pid "
                "where l.locktype = 'advisory' and l.granted and l.objsubid = 2 "
                f"and l.classid = {RELAY_SHARD_LOCK_NAMESPACE} "
                f"and (l.objid::bigint >> 8) = {self.table_key} "
                "and l.database = (select oid from pg_database where datname = current_database()) "
                "order by 1")

    # ------------------------------------------------------------------ status
    @property
    def backlog(self) -> str:
        """Pending rows and the age in seconds of the oldest, optionally for some shards."""
        return (f"select count(*), extract(epoch from {NOW_UTC} - min(created_at))::float8 "
                f"from {self.qualified} where published_at is null and failed_at is null "
                "and (%(shards)s::smallint[] is null or shard = any(%(shards)s::smallint[]))")

    @property
    def failed_count(self) -> str:
        return (f"select count(*) from {self.qualified} "
                "where failed_at is not null and published_at is null")

    @property
    def failed_rows(self) -> str:
        return (f"select seq, id, aggregatetype, aggregateid, type, attempts, failed_at, "
                f"last_error from {self.qualified} "
                "where failed_at is not null and published_at is null order by seq limit %(limit)s")

    @property
    def retry_failed(self) -> str:
        """Un-park failed rows (optionally of one aggregate type / id) for a fresh start."""
        return (f"update {self.qualified} set failed_at = null, attempts = 0 "
                "where failed_at is not null and published_at is null "
                "and (%(aggregatetype)s::text is null or aggregatetype = %(aggregatetype)s) "
                "and (%(aggregateid)s::text is null or aggregateid = %(aggregateid)s)")

    # ------------------------------------------------------------------ retention
    @property
    def purge_batch(self) -> str:
        """Walk %(limit)s rows in seq order after %(after)s; delete those published before the
        cutoff. Returns (deleted, last seq walked, rows walked, rows created after the cutoff).

        No index on ``published_at`` (every mark would pay for it): the walk uses the
        ``seq`` index from the oldest row on, and :func:`relay.retention.purge` stops at the
        first batch that holds a row created after the cutoff, since a row is published
        after it is created. Rows still pending or parked in the old range are walked over
        (and walked again on the next run) but never deleted. Writers never touch
        published rows and the relay only updates pending ones, so the short delete takes
        no lock anybody waits for.
        """
        cutoff = f"{NOW_UTC} - make_interval(secs => %(older_than)s)"
        # %(captured)s: Debezium reads rows from the WAL and never marks them, so with CDC
        # an old row counts as delivered once it is older than the cutoff.
        return (f"with walked as materialized (select seq, published_at, created_at "
                f"  from {self.qualified} where seq > %(after)s order by seq limit %(limit)s), "
                f"deleted as (delete from {self.qualified} o using walked w "
                f"  where o.seq = w.seq and (w.published_at < {cutoff} or (%(captured)s "
                f"  and w.published_at is null and w.created_at < {cutoff})) returning o.seq) "
                "select (select count(*) from deleted), (select max(seq) from walked), "
                "(select count(*) from walked), "
                f"(select count(*) from walked where created_at >= {cutoff})")

    # ------------------------------------------------------------------ wake-up
    @property
    def notify_trigger(self) -> str:
        """A statement-level trigger that NOTIFYs the relays' channel after inserts.

        Statement-level: one notification per inserting statement, not per row, and
        PostgreSQL folds identical notifications of one transaction into one.
        """
        fn = f"{self.schema}.{self.table}_notify_relay"
        return (
            f"create or replace function {fn}() returns trigger language plpgsql as $$ "
            f"begin perform pg_notify('{self.channel}', ''); return null; end $$; "
            f"create or replace trigger {self.table}_notify_relay after insert on "
            f"{self.qualified} for each statement execute function {fn}();")

    @property
    def drop_notify_trigger(self) -> str:
        return (f"drop trigger if exists {self.table}_notify_relay on {self.qualified}; "
                f"drop function if exists {self.schema}.{self.table}_notify_relay();")
