"""The relay's database connections: one way to open each kind, and how errors read.

Every session is named (``application_name``), so ``outbox status`` and
``pg_stat_activity`` tell relays, their readers and side threads apart, and fails within
five seconds when the server cannot be reached. Sessions that read the outbox are told to
use its indexes (:func:`relay.queries.prefer_index_scans`) and to sort a window in memory.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outbox.errors import first_line
from outbox.settings import Settings
from relay.queries import prefer_index_scans

Connection = psycopg.Connection[tuple[Any, ...]]

CONNECT_TIMEOUT = 5
SORT_MEMORY = "64MB"
# The loop's session holds the shard locks: a dead peer must be noticed within ~11 s
# (5 s idle, then 3 probes 2 s apart), so another relay can take its shards.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3}


def connect(settings: Settings, application_name: str, *, reads_outbox: bool = False,
            holds_locks: bool = False, autocommit: bool = True) -> Connection:
    """A session of the relay. ``reads_outbox``: the outbox's index scans are preferred;
    ``holds_locks``: TCP keepalives detect a dead connection (the shard locks' session);
    without ``autocommit`` the session settings are committed before it is returned."""
    extra: dict[str, Any] = KEEPALIVES if holds_locks else {}
    conn = psycopg.connect(settings.libpq_url(), autocommit=autocommit,
                           application_name=application_name,
                           connect_timeout=CONNECT_TIMEOUT, **extra)
    if reads_outbox:
        prefer_index_scans(conn)
        # Each shard's rows of a window are sorted by seq (relay.sql, declare_window): in
        # memory, not spilled to disk (a shard of a 25-million-row backlog: ~39 MB).
        conn.execute(f"set work_mem = '{SORT_MEMORY}'")
        if not autocommit:
            conn.commit()
    return conn


__all__ = ["Connection", "connect", "first_line"]
