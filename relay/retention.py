"""Retention: delete published rows older than the retention, in small short transactions."""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from outbox.settings import Settings
from relay.queries import Queries

log = logging.getLogger("outbox.relay")


def purge(settings: Settings, older_than_seconds: float, *, batch_size: int = 1000,
          pause: float = 0.01, stop: threading.Event | None = None) -> int:
    """Delete rows published more than ``older_than_seconds`` ago; returns how many.

    Walks the table in ``seq`` order, ``batch_size`` rows per short autocommit transaction,
    until it reaches rows created after the cutoff (see ``Queries.purge_batch``). Only
    published rows are deleted: writers never update them and the relay never claims them,
    so nobody waits on it; the pause between batches leaves I/O to the application. A row
    whose transaction ran long may be purged one run late; never early.
    """
    if older_than_seconds < 0:
        raise ValueError(f"retention must not be negative, got {older_than_seconds}s")
    queries = Queries.for_settings(settings)
    total = 0
    after = 0  # seq is an identity starting at 1
    with psycopg.connect(settings.libpq_url(), autocommit=True,
                         application_name="outbox-purge") as conn:
        while stop is None or not stop.is_set():
            row = conn.execute(queries.purge_batch, {
                "older_than": older_than_seconds, "limit": batch_size, "after": after,
            }).fetchone()
            assert row is not None
            deleted, last_seq, walked, too_young = row
            total += int(deleted)
            if walked < batch_size or too_young:
                break  # the end of the table, or of the rows old enough to be purged
            after = int(last_seq)
            time.sleep(pause)
    if total:
        log.info("purged %d published rows older than %ss", total, older_than_seconds,
                 extra={"action": "purged", "rows": total})
    return total
