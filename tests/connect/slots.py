"""Replication-slot clean-up for CDC tests: a forgotten slot pins WAL forever."""

from __future__ import annotations

import time

import psycopg


def drop_slot_when_released(database_url: str, slot: str, timeout: float = 30.0) -> None:
    """Drop ``slot`` once no connector streams from it (after the connector's delete).

    A deleted connector's task may hold the slot a little longer, or take it again while
    stopping: wait politely for 10 s, then end the walsender still holding it, and retry
    the drop until it succeeds (CI once failed on a slot re-acquired between the check
    and the drop).
    """
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute("select active, active_pid from pg_replication_slots "
                               "where slot_name = %s", (slot,)).fetchone()
            if row is None:
                return
            active, pid = row
            waited = time.monotonic() - started
            if active and waited > 10:
                conn.execute("select pg_terminate_backend(%s)", (pid,))
            if not active or waited > 10:
                try:
                    conn.execute("select pg_drop_replication_slot(%s)", (slot,))
                    return
                except psycopg.errors.ObjectInUse:
                    pass  # taken again meanwhile: look again
            assert waited < timeout, f"replication slot {slot} still in use after {timeout}s"
            time.sleep(0.5)
