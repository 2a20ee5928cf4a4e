"""Every SQL statement the relay, ``outbox status`` and ``outbox purge`` send.

The statements are written out whole in ``relay/relay.sql`` (named blocks, loaded as
``outbox/sql`` loads its own); :class:`Queries` fills in one outbox table's names. Table
and schema names come from :class:`outbox.settings.Settings`, which accepts only plain
identifiers, and are written into the text quoted (:func:`outbox.settings.qualified`), so
``Billing`` and ``user`` mean the same table here as in the migrations and ``publish()``;
values are always bound parameters.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE
from outbox.names import SHARD_COUNT, relay_cursor_name
from outbox.settings import Settings, check_identifier, qualified, quote_ident
from outbox.sql import literal, render, statements_in
from relay.rows import RECORD_COLUMNS, ROW_COLUMNS
from relay.window import ShardCursor, read_params

SQL_FILE = Path(__file__).with_name("relay.sql")
APPLICATION_PREFIX = "outbox-relay"

__all__ = [
    "APPLICATION_PREFIX",
    "RECORD_COLUMNS",
    "ROW_COLUMNS",
    "Queries",
    "delivered_on_fast_path",
    "prefer_index_scans",
    "read_backlog",
]


def prefer_index_scans(conn: psycopg.Connection[Any]) -> None:
    """Session settings of every relay connection that reads the outbox: never a
    sequential or bitmap scan. With stale statistics (a burst just arrived or drained) the
    planner would scan the whole table for a window of a few rows; the window's index
    range scan is what it must use whatever the statistics say. (Measured with the
    per-row marking of schema 2: a claim of 3 new rows over 20,000 just-published ones,
    11-15 ms -> 1-2 ms.) And no JIT: the window query's estimated cost can pass
    ``jit_above_cost`` (the planner guesses 50 in-progress ids per snapshot), and compiling
    it took 10 ms for a query that runs in 1 ms. And generic plans of prepared statements:
    for a window read of a few shards (relay.hints) PostgreSQL otherwise plans every
    execution anew, 0.3-0.6 ms each, for the same nested loop of index scans."""
    conn.execute("set enable_seqscan = off")
    conn.execute("set enable_bitmapscan = off")
    conn.execute("set jit = off")
    conn.execute("set plan_cache_mode = force_generic_plan")


@functools.cache
def _templates() -> dict[str, str]:
    """relay.sql's statements without their comment lines (a ``%(name)s`` in a comment
    would be a placeholder to psycopg)."""
    return {name: "\n".join(line for line in body.splitlines()
                            if not line.lstrip().startswith("--")) + "\n"
            for name, body in statements_in(SQL_FILE).items()}


def delivered_on_fast_path(row: str, cursor: str) -> str:
    """SQL: row ``row`` (an alias) of the outbox is delivered according to the relay's
    cursor table ``cursor`` (qualified) or one by one (``published_at``). See relay.window
    for the reasoning."""
    return render(_templates()["delivered"], row=row, cursor=cursor).strip()


@dataclass(frozen=True)
class Queries:
    """The SQL for one outbox table (each statement is rendered once, then cached)."""

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
    def cursor_table(self) -> str:
        """The relay's cursor table in SQL, quoted."""
        return qualified(self.schema, relay_cursor_name(self.table))

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

    @property
    def table_key(self) -> int:
        """23 bits naming this outbox table, so relays of *other* outbox tables in the same
        database (one per service schema, say) never compete for this table's shards.
        From the unquoted name, so relays of earlier versions take the same locks."""
        return zlib.crc32(self.name.encode()) & 0x7FFFFF

    def sql(self, statement: str, **extra: str) -> str:
        """Statement ``statement`` of relay.sql for this table."""
        trigger = f"{self.table}_notify_relay"
        return render(_templates()[statement], outbox=self.qualified, cursor=self.cursor_table,
                      outbox_literal=literal(self.qualified),
                      cursor_literal=literal(self.cursor_table),
                      lock_namespace=str(RELAY_SHARD_LOCK_NAMESPACE),
                      table_key=str(self.table_key), shard_key_base=str(self.table_key << 8),
                      channel_literal=literal(self.channel), trigger=quote_ident(trigger),
                      trigger_literal=literal(trigger),
                      trigger_function=qualified(self.schema, trigger), **extra)

    def delivered(self, row: str = "o") -> str:
        """SQL: outbox row ``row`` (an alias) has been delivered to Kafka."""
        return delivered_on_fast_path(row, self.cursor_table)

    def schema_problem(self, conn: psycopg.Connection[Any]) -> str | None:
        """Why this database cannot be relayed (or reported on) by this version, or None."""
        row = conn.execute(self.schema_check).fetchone()
        if row is None or not row[0]:
            return (f"the outbox table {self.name} does not exist: run "
                    "`outbox db upgrade` (check --schema / --outbox-table)")
        if not row[1]:
            return (f"{self.schema}.{relay_cursor_name(self.table)} does not exist: the "
                    "outbox schema is older than this toolkit; run `outbox db upgrade`")
        if not row[2]:
            return (f"{self.name} has no tracestate column (schema version 6): the outbox "
                    "schema is older than this toolkit; run `outbox db upgrade`")
        return None

    def relay_problem(self, conn: psycopg.Connection[Any], deletes: bool) -> str | None:
        """:meth:`schema_problem`, then :meth:`privilege_problem`: why a relay cannot start."""
        return self.schema_problem(conn) or self.privilege_problem(conn, deletes)

    def privilege_problem(self, conn: psycopg.Connection[Any], deletes: bool) -> str | None:
        """What the session's role lacks to relay this table (``deletes``: with retention),
        as one line saying what to grant, or None. Call after :meth:`schema_problem`."""
        missing = [str(row[0]) for row in conn.execute(self.missing_privileges,
                                                       {"deletes": deletes})]
        if not missing:
            return None
        user = conn.info.user
        return (f"role {user} may not do what the relay does with {self.name}: grant it "
                f"{'; '.join(missing)} (the relay role of `outbox db roles --sql` has them)")

    def declare_window(self, name: str) -> str:
        """A server-side cursor ``name`` over the rest of a large window."""
        return self.sql("declare_window", name=name)

    # The statements, by name (relay.sql documents each).
    @functools.cached_property
    def schema_check(self) -> str:
        return self.sql("schema_check")

    @functools.cached_property
    def missing_privileges(self) -> str:
        return self.sql("missing_privileges")

    @functools.cached_property
    def load_cursors(self) -> str:
        return self.sql("load_cursors")

    @functools.cached_property
    def save_cursors(self) -> str:
        return self.sql("save_cursors")

    @functools.cached_property
    def snapshot(self) -> str:
        return self.sql("snapshot")

    @functools.cached_property
    def first_window_batch(self) -> str:
        return self.sql("first_window_batch")

    @functools.cached_property
    def claim_retry(self) -> str:
        return self.sql("claim_retry")

    @functools.cached_property
    def mark_published(self) -> str:
        return self.sql("mark_published")

    @functools.cached_property
    def hold_waiting(self) -> str:
        return self.sql("hold_waiting")

    @functools.cached_property
    def record_failure(self) -> str:
        return self.sql("record_failure")

    @functools.cached_property
    def hold_back(self) -> str:
        return self.sql("hold_back")

    @functools.cached_property
    def blocked_aggregates(self) -> str:
        return self.sql("blocked_aggregates")

    @functools.cached_property
    def shard_locks(self) -> str:
        return self.sql("shard_locks")

    @functools.cached_property
    def shard_unlocks(self) -> str:
        return self.sql("shard_unlocks")

    @functools.cached_property
    def live_relays(self) -> str:
        return self.sql("live_relays")

    @functools.cached_property
    def logical_slots(self) -> str:
        return self.sql("logical_slots")

    @functools.cached_property
    def shard_owners(self) -> str:
        return self.sql("shard_owners")

    @functools.cached_property
    def backlog(self) -> str:
        return self.sql("backlog")

    @functools.cached_property
    def retrying_count(self) -> str:
        return self.sql("retrying_count")

    @functools.cached_property
    def oldest_writer(self) -> str:
        return self.sql("oldest_writer")

    @functools.cached_property
    def failed_count(self) -> str:
        return self.sql("failed_count")

    @functools.cached_property
    def failed_rows(self) -> str:
        return self.sql("failed_rows")

    @functools.cached_property
    def retry_failed(self) -> str:
        return self.sql("retry_failed")

    @functools.cached_property
    def purge_batch(self) -> str:
        return self.sql("purge_batch")

    @functools.cached_property
    def notify_trigger(self) -> str:
        return self.sql("notify_trigger")

    @functools.cached_property
    def drop_notify_trigger(self) -> str:
        return self.sql("drop_notify_trigger")

    def notify_installed(self, conn: psycopg.Connection[Any]) -> bool | None:
        """Whether the NOTIFY trigger is installed and enabled on the outbox table: True
        for this version's (it names shards), False for an earlier version's statement
        trigger (it does not), None when there is none."""
        row = conn.execute(self.sql("notify_installed")).fetchone()
        return None if row is None else bool(row[0])


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
