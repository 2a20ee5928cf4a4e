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
          pause: float = 0.01, stop: threading.Event | None = None,
          captured: bool = False) -> int:
    """Delete rows published more than ``older_than_seconds`` ago; returns how many.

    ``captured`` (Debezium CDC delivers the table): rows created before the cutoff go too,
    published or not, since Debezium read them from the WAL and never marks them. Check
    with :func:`check_captured` first: with a relay, unpublished rows must stay.

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
                "captured": captured}).fetchone()
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


def check_captured(settings: Settings) -> None:
    """Refuse a CDC purge (``captured=True``) that could delete undelivered events.

    Deleting a row Debezium has not streamed yet loses nothing (the insert stays in the
    WAL, which the slot retains), but deleting a row a *relay* has not published does.
    So: a logical replication slot must exist in this database, and no relay of this table
    may be connected.
    """
    queries = Queries.for_settings(settings)
    with psycopg.connect(settings.libpq_url(), autocommit=True,
                         application_name="outbox-purge") as conn:
        slots = conn.execute(queries.logical_slots).fetchone()
        relays = conn.execute(queries.live_relays, {
            "pattern": queries.application_name + ":%"}).fetchone()
    if not slots or not slots[0]:
        raise ValueError(
            "--cdc refused: this database has no logical replication slot, so no connector "
            "captures the outbox; rows that are not published would be lost. Without "
            "Debezium, purge without --cdc (published rows only)")
    if relays and relays[0]:
        raise ValueError(
            f"--cdc refused: {relays[0]} relay(s) of {queries.name} are connected; rows "
            "they have not published yet would be lost. Purge without --cdc, or stop them")
