"""Replication-slot clean-up for CDC tests: a forgotten slot pins WAL forever."""

from __future__ import annotations

import time

import psycopg


def drop_slot_when_released(database_url: str, slot: str, timeout: float = 30.0) -> None:
    """Wait until no connector streams from ``slot`` (after a delete), then drop it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("select active from pg_replication_slots where slot_name = %s",
                               (slot,)).fetchone()
            if row is None:
                return
            if not row[0]:
                conn.execute("select pg_drop_replication_slot(%s)", (slot,))
                return
            time.sleep(0.5)
