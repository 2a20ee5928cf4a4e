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

    Each batch is its own short autocommit transaction touching only published rows, which
    writers never update and the relay never claims, so nobody waits on it; the pause
    between batches leaves I/O to the application.
    """
    if older_than_seconds < 0:
        raise ValueError(f"retention must not be negative, got {older_than_seconds}s")
    queries = Queries.for_settings(settings)
    total = 0
    with psycopg.connect(settings.libpq_url(), autocommit=True,
                         application_name="outbox-purge") as conn:
        while stop is None or not stop.is_set():
            deleted = conn.execute(queries.purge_batch, {
                "older_than": older_than_seconds, "limit": batch_size}).rowcount
            total += max(0, deleted)
            if deleted < batch_size:
                break
            time.sleep(pause)
    if total:
        log.info("purged %d published rows older than %ss", total, older_than_seconds,
                 extra={"action": "purged", "rows": total})
    return total
