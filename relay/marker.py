"""Marks delivered rows published on a connection of its own, off the relay loop's path.

The loop hands over one ``UPDATE ... where seq = any(...)`` per settled batch and carries
on claiming and producing other shard groups meanwhile; the batch's group stays busy until
the update has committed, so its next claim can never see those rows again.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import psycopg

from outbox.settings import Settings
from relay.queries import Queries


class Marker:
    """``workers`` threads, each with its own autocommit connection.

    Batches of different shard groups never share a row, so their updates can run side
    by side (one PostgreSQL backend each); one batch is always one statement.
    """

    def __init__(self, settings: Settings, queries: Queries, instance_id: str,
                 workers: int = 1, delete: bool = False) -> None:
        self.settings = settings
        # retention 0: delivered rows are deleted rather than marked
        self.statement = queries.delete_published if delete else queries.mark_published
        self.application_name = f"outbox-relay-mark:{instance_id}"
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                        thread_name_prefix="relay-mark")
        self._local = threading.local()
        self._conns: list[psycopg.Connection[tuple[object, ...]]] = []
        self._lock = threading.Lock()

    def submit(self, seqs: list[int]) -> Future[int]:
        """Mark ``seqs`` published (or delete them); the future holds the row count or the
        database error."""
        return self._pool.submit(self._mark, seqs)

    def _mark(self, seqs: list[int]) -> int:
        conn: psycopg.Connection[tuple[object, ...]] | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = psycopg.connect(
                    self.settings.libpq_url(), autocommit=True,
                    application_name=self.application_name, connect_timeout=5)
                self._local.conn = conn
                with self._lock:
                    self._conns.append(conn)
            return conn.execute(self.statement, {"seqs": seqs}).rowcount
        except psycopg.OperationalError:
            # Reconnect on the next batch; this one stays unmarked and is sent again.
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._local.conn = None
            raise

    def close(self) -> None:
        """Wait for submitted updates, then close the connections."""
        self._pool.shutdown(wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()
