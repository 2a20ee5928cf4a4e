"""The read connection of one shard group: a large window fetched one batch ahead.

Under a backlog a window holds more rows than a batch. It is read through a server-side
cursor (sorted once by PostgreSQL) in a repeatable-read transaction, on a connection and
a thread of its own: while the relay loop produces one batch, the next one is already
being fetched, so the loop rarely waits for PostgreSQL. Nothing here writes: progress
is recorded by the loop, on the session that holds the shards' locks.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from outbox.settings import Settings
from relay.connections import connect
from relay.queries import Queries

CURSOR = "relay_window"

Rows = list[tuple[Any, ...]]


class WindowReader:
    """Reads the windows of one shard group; every database call runs on its own thread."""

    def __init__(self, settings: Settings, queries: Queries, application_name: str,
                 batch_size: int) -> None:
        self.settings = settings
        self.queries = queries
        self.application_name = application_name
        self.batch_size = batch_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-read")
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._next: Future[Rows] | None = None
        self.open = False
        # the shards of the open window, and its snapshot once start() has been served
        self.shards: list[int] = []
        self.snapshot: str | None = None

    def start(self, shards: list[int], params: dict[str, Any]) -> None:
        """Open a new window: its snapshot is the transaction's, for shards without a window
        of their own (``win`` null in ``params``). The first batch is fetched at once."""
        self.open = True
        self.shards = shards
        self.snapshot = None
        self._next = self._pool.submit(self._start, params)

    def resume(self, shards: list[int], params: dict[str, Any]) -> None:
        """Read on in a window whose first rows were read elsewhere (every ``win`` given)."""
        self.open = True
        self.shards = shards
        self._next = self._pool.submit(self._declare_and_fetch, params)

    def fetch(self) -> Rows:
        """The next batch (fewer rows than a batch: the window is read to its end, and the
        transaction is over)."""
        assert self._next is not None, "declare() first"
        rows = self._next.result()
        if len(rows) < self.batch_size:
            self._next = None
            self.open = False
        else:
            self._next = self._pool.submit(self._fetch)
        return rows

    def close(self) -> None:
        """Drop the open window, if any (its prefetched rows are read again later)."""
        pending, self._next = self._next, None
        if pending is not None:
            with contextlib.suppress(Exception):  # an error here is reported by the loop
                pending.result()
        if self.open:
            self.open = False
            self._pool.submit(self._rollback).result()

    def shutdown(self) -> None:
        """Close the connection and stop the thread (the connection may be broken)."""
        self._next = None
        self.open = False
        self._pool.submit(self._disconnect).result()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ on the thread
    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None:
            conn = connect(self.settings, self.application_name, reads_outbox=True,
                           autocommit=False)
            # Repeatable read: the snapshot read by begin() is the cursor's own.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._conn = conn
        return self._conn

    def _start(self, params: dict[str, Any]) -> Rows:
        conn = self._connection()
        conn.execute(self.queries.declare_window(CURSOR), params)
        row = conn.execute(self.queries.snapshot).fetchone()  # the same snapshot
        assert row is not None
        self.snapshot = str(row[0])
        return self._fetch()

    def _declare_and_fetch(self, params: dict[str, Any]) -> Rows:
        self._connection().execute(self.queries.declare_window(CURSOR), params)
        return self._fetch()

    def _fetch(self) -> Rows:
        conn = self._connection()
        rows = conn.execute(f"fetch forward {self.batch_size} from {CURSOR}").fetchall()
        if len(rows) < self.batch_size:
            conn.commit()
        return rows

    def _rollback(self) -> None:
        if self._conn is not None:
            self._conn.rollback()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
