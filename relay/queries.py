"""Every SQL statement the relay, ``outbox status`` and ``outbox purge`` send.

One place for SQL, as in procrastinate's ``manager.py``. Table and schema names come from
:class:`outbox.settings.Settings`, which accepts only plain identifiers, and are written
into the text quoted (:func:`outbox.settings.qualified`), so ``Billing`` and ``user`` mean
the same table here as in the migrations and ``publish()``; values are always bound
parameters.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import psycopg

from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE
from outbox.migrations.ddl import delivered_on_fast_path
from outbox.settings import Settings, check_identifier, qualified, quote_ident
from outbox.tables import SHARD_COUNT, relay_cursor_name
from relay.window import ShardCursor, read_params

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


def prefer_index_scans(conn: psycopg.Connection[Any]) -> None:
    """Session settings of every relay connection that reads the outbox: never a
    sequential or bitmap scan. With stale statistics (a burst just arrived or drained) the
    planner would scan the whole table for a window of a few rows; the window's index
    range scan is what it must use whatever the statistics say. (Measured with the
    per-row marking of schema 2: a claim of 3 new rows over 20,000 just-published ones,
    11-15 ms -> 1-2 ms.) And no JIT: the window query's estimated cost can pass
    ``jit_above_cost`` (the planner guesses 50 in-progress ids per snapshot), and compiling
    it took 10 ms for a query that runs in 1 ms."""
    conn.execute("set enable_seqscan = off")
    conn.execute("set enable_bitmapscan = off")
    conn.execute("set jit = off")


def _numbers(param: str, sql_type: str) -> str:
    """A ``,``-separated parameter (relay.window.read_params) as an array of ``sql_type``."""
    return f"string_to_array(%({param})s, ',')::{sql_type}[]"


def _snapshots(param: str) -> str:
    """A ``;``-separated parameter of snapshots, an empty one null, as ``pg_snapshot[]``."""
    return f"string_to_array(%({param})s, ';', '')::pg_snapshot[]"


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
    def name(self) -> str:
        """``schema.table`` as people read it (messages, ``outbox status``), unquoted."""
        return f"{self.schema}.{self.table}"

    @property
    def qualified(self) -> str:
        """The outbox table in SQL: ``"schema"."table"``."""
        return qualified(self.schema, self.table)

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that wakes relays of this table (case kept)."""
        return f"outbox_{self.schema}_{self.table}"[:63]

    @property
    def listen(self) -> str:
        """LISTEN on :attr:`channel`; quoted, or PostgreSQL would fold ``Billing`` to
        lower case while ``pg_notify`` keeps it."""
        return f"listen {quote_ident(self.channel)}"

    @property
    def application_name(self) -> str:
        """Prefix of relay sessions' application_name, per table (to count live relays)."""
        return f"{APPLICATION_PREFIX}:{self.name}"[:50]

    # ------------------------------------------------------------------ the relay
    @property
    def cursor_table(self) -> str:
        """The relay's cursor table in SQL, quoted."""
        return qualified(self.schema, relay_cursor_name(self.table))

    def delivered(self, row: str = "o") -> str:
        """SQL: outbox row ``row`` (an alias) has been delivered to Kafka."""
        return (f"({row}.published_at is not null or "
                f"{delivered_on_fast_path(row, self.cursor_table)})")

    @property
    def schema_check(self) -> str:
        """Whether the outbox table and the relay cursor table (schema version 3) exist."""
        return (f"select to_regclass('{self.qualified}') is not null, "
                f"to_regclass('{self.cursor_table}') is not null")

    def schema_problem(self, conn: psycopg.Connection[Any]) -> str | None:
        """Why this database cannot be relayed (or reported on) by this version, or None."""
        row = conn.execute(self.schema_check).fetchone()
        if row is None or not row[0]:
            return (f"the outbox table {self.name} does not exist: run "
                    "`outbox db upgrade` (check --schema / --outbox-table)")
        if not row[1]:
            return (f"{self.schema}.{relay_cursor_name(self.table)} does not exist: the "
                    "outbox schema is older than this toolkit; run `outbox db upgrade`")
        return None

    @property
    def load_cursors(self) -> str:
        """The relay cursor of each given shard that has one: (shard, done, win, upto)."""
        return (f"select shard, done, win, upto from {self.cursor_table} "
                "where shard = any(%(shards)s::smallint[])")

    @property
    def save_cursors(self) -> str:
        """Record delivery progress of several shards in one statement."""
        return (f"insert into {self.cursor_table} (shard, done, win, upto, updated_at) "
                f"select *, {NOW_UTC} from unnest(%(shards)s::smallint[], %(done)s::text[], "
                "%(win)s::text[], %(upto)s::int8[]) "
                "on conflict (shard) do update set done = excluded.done, win = excluded.win, "
                "upto = excluded.upto, updated_at = excluded.updated_at")

    @property
    def snapshot(self) -> str:
        return "select pg_current_snapshot()::text"

    def _uncovered(self, columns: str, conditions: str) -> str:
        """``from`` a derived table ``o`` (``columns``) of the rows of the given shards
        that their cursor's ``done`` does not see and that meet ``conditions`` (over the
        row and ``s.win``, ``s.upto``), with read_params' parameters.

        Per shard an index scan of ix_<table>_window from txid ``lo``, skipping what
        ``done`` sees, plus a lookup per ``probe_*`` entry (relay.window.scan_bounds).
        ``offset 0`` keeps each subquery per shard: pulled up, the planner may prefer to
        read the whole table in seq order and hash-join the shards (fine on a fresh table,
        ruinous on one holding days of delivered rows)."""
        return (
            f"from (select r.* from unnest({_numbers('shards', 'smallint')}, "
            f"  {_snapshots('done')}, {_snapshots('win')}, {_numbers('upto', 'int8')}, "
            f"  {_numbers('lo', 'xid8')}) as s(shard, done, win, upto, lo) "
            f"  cross join lateral (select {columns} from {self.qualified} "
            "    where shard = s.shard and txid >= s.lo "
            f"    and not pg_visible_in_snapshot(txid, s.done) and {conditions} offset 0) as r "
            f"  union all select r.* from unnest({_numbers('probe_shards', 'smallint')}, "
            f"  {_numbers('probe_xids', 'xid8')}, {_snapshots('probe_wins')}, "
            f"  {_numbers('probe_upto', 'int8')}) as s(shard, xip, win, upto) "
            f"  cross join lateral (select {columns} from {self.qualified} "
            f"    where shard = s.shard and txid = s.xip and {conditions} offset 0) as r"
            ") as o")

    def _window_rows(self) -> str:
        # Not seen by ``done``, visible in ``win`` (no window yet: the statement's own
        # snapshot), seq above ``upto``, and still on the fast path (no ``last_error``).
        return self._uncovered(_RAW, "(s.win is null or pg_visible_in_snapshot(txid, s.win)) "
                                     "and seq > s.upto and last_error is null") + " order by o.seq"

    @property
    def first_window_batch(self) -> str:
        """The first %(limit)s rows of a new window of the given shards, in seq order, each
        with the statement's snapshot (the window of shards that had none) as last column.

        Used on its own while the relay keeps up (a window of a few rows is read whole in
        one statement); a larger window is read on with :meth:`declare_window`.
        """
        return (f"select {ROW_COLUMNS}, pg_current_snapshot()::text {self._window_rows()} "
                "limit %(limit)s")

    def declare_window(self, name: str) -> str:
        """A server-side cursor over the rest of a large window: sorted once, fetched in
        batches (relay.window). Every shard's window is given explicitly."""
        return f"declare {name} no scroll cursor for select {ROW_COLUMNS} {self._window_rows()}"

    @property
    def claim_retry(self) -> str:
        """Rows taken off the fast path and not delivered or parked, in seq order."""
        return (
            f"select {ROW_COLUMNS} from {self.qualified} as o "
            "where shard = any(%(shards)s::smallint[]) and last_error is not null "
            "and published_at is null and failed_at is null order by seq limit %(limit)s")

    @property
    def mark_published(self) -> str:
        """Rows delivered one by one (off the fast path) are marked individually."""
        return (f"update {self.qualified} set published_at = {NOW_UTC} "
                "where seq = any(%(seqs)s) and published_at is null")

    @property
    def hold_waiting(self) -> str:
        """Take rows off the fast path behind an earlier failed row of their aggregate that
        is still being retried: they follow it through the retry claim."""
        return (f"update {self.qualified} set last_error = %(error)s "
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
        """Aggregates of these shards with rows off the fast path and not delivered:
        (aggregatetype, aggregateid, first such seq, shard, whether that row is parked)."""
        return (f"select aggregatetype, aggregateid, min(seq), min(shard), "
                "(array_agg(failed_at is not null order by seq))[1] "
                f"from {self.qualified} where shard = any(%(shards)s::smallint[]) "
                "and last_error is not null and published_at is null "
                "group by aggregatetype, aggregateid")

    # ------------------------------------------------------------------ shards
    @property
    def table_key(self) -> int:
        """23 bits naming this outbox table, so relays of *other* outbox tables in the same
        database (one per service schema, say) never compete for this table's shards.
        From the unquoted name, so relays of earlier versions take the same locks."""
        return zlib.crc32(self.name.encode()) & 0x7FFFFF

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
        """Undelivered, unparked rows and the age in seconds of the oldest (parameters:
        :func:`backlog_params`): per shard, the fast-path rows its cursor has not covered,
        plus rows waiting in the retry claim."""
        uncovered = self._uncovered(
            "created_at", "last_error is null and not (s.win is not null and seq <= s.upto "
                          "and pg_visible_in_snapshot(txid, s.win))")
        return (
            f"select count(*), extract(epoch from {NOW_UTC} - min(created_at))::float8 from ("
            f"  select o.created_at {uncovered} "
            "  union all "
            f"  select created_at from {self.qualified} "
            f"  where shard = any({_numbers('shards', 'smallint')}) "
            "    and last_error is not null and published_at is null and failed_at is null"
            ") as pending")

    @property
    def retrying_count(self) -> str:
        """Rows off the fast path waiting for the retry claim (failed, not parked yet, or
        held behind such a row)."""
        return (f"select count(*) from {self.qualified} where last_error is not null "
                "and published_at is null and failed_at is null")

    @property
    def oldest_writer(self) -> str:
        """Seconds since the oldest transaction holding a transaction id began (it holds
        back VACUUM, of the outbox too; its own events wait for its commit)."""
        return ("select extract(epoch from now() - min(xact_start))::float8 "
                "from pg_stat_activity where backend_xid is not null")

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
        """Walk %(limit)s rows in seq order after %(after)s; delete those delivered and older
        than the cutoff. Returns (deleted, last seq walked, rows walked, rows created after
        the cutoff).

        Age counts from ``created_at`` for rows the relay's cursor delivered (they carry no
        delivery time) and from ``published_at`` for rows delivered one by one. The walk
        uses the ``seq`` index from the oldest row on, and :func:`relay.retention.purge`
        stops at the first batch that holds a row created after the cutoff. Rows still
        pending or parked in the old range are walked over (and walked again on the next
        run) but never deleted. Writers never touch delivered rows and the relay only
        updates undelivered ones, so the short delete takes no lock anybody waits for.
        """
        cutoff = f"{NOW_UTC} - make_interval(secs => %(older_than)s)"
        # %(captured)s: Debezium reads rows from the WAL and never marks them, so with CDC
        # an old row counts as delivered once it is older than the cutoff.
        return (f"with walked as materialized (select seq, shard, txid, published_at, "
                f"  last_error, created_at from {self.qualified} where seq > %(after)s "
                "  order by seq limit %(limit)s), "
                f"deleted as (delete from {self.qualified} o using walked w "
                f"  where o.seq = w.seq and (w.published_at < {cutoff} "
                f"  or (w.created_at < {cutoff} and w.published_at is null "
                f"      and (%(captured)s or {delivered_on_fast_path('w', self.cursor_table)})))"
                "  returning o.seq) "
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
        name = f"{self.table}_notify_relay"
        fn = qualified(self.schema, name)
        return (
            f"create or replace function {fn}() returns trigger language plpgsql as $$ "
            f"begin perform pg_notify('{self.channel}', ''); return null; end $$; "
            f"create or replace trigger {quote_ident(name)} after insert on "
            f"{self.qualified} for each statement execute function {fn}();")

    @property
    def drop_notify_trigger(self) -> str:
        name = f"{self.table}_notify_relay"
        return (f"drop trigger if exists {quote_ident(name)} on {self.qualified}; "
                f"drop function if exists {qualified(self.schema, name)}();")


def read_backlog(conn: psycopg.Connection[Any], queries: Queries,
                 shards: list[int] | None = None) -> tuple[int, float | None]:
    """Undelivered, unparked rows of ``shards`` (all: None) and the age in seconds of the
    oldest: the cursors as stored, then ``queries.backlog``."""
    shards = list(range(SHARD_COUNT)) if shards is None else shards
    cursors = {s: ShardCursor() for s in shards}
    for shard, done, win, upto in conn.execute(queries.load_cursors, {"shards": shards}):
        cursors[shard] = ShardCursor(done, win, upto)
    row = conn.execute(queries.backlog, read_params(shards, cursors, None)).fetchone()
    if row is None:
        return 0, None
    return int(row[0]), float(row[1]) if row[1] is not None else None
