"""The inbox: one row per (consumer group, event id) applied, in the handler's transaction.

The statements are in ``inbox.sql`` (named blocks, each pasteable into ``EXPLAIN``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, TextClause, text
from sqlalchemy.orm import Session

from consumers.message import IncomingEvent
from outbox.settings import Settings, qualified
from outbox.sql import render, statements_in

SQL_FILE = Path(__file__).with_name("inbox.sql")


class InboxStore:
    """Records which events a consumer group has applied."""

    def __init__(self, settings: Settings) -> None:
        # Settings checked both names (check_identifier); qualified() quotes them.
        name = qualified(settings.db_schema, settings.inbox_table)
        self.sql: dict[str, TextClause] = {
            key: text(render(body, inbox=name)) for key, body in statements_in(SQL_FILE).items()}

    def claim(self, session: Session, group: str, event: IncomingEvent) -> bool:
        """Insert the dedupe row; False if this group already applied the event.

        Runs in the handler's transaction: if the handler fails, the row goes with it.
        """
        row = session.execute(self.sql["claim"], {
            "group": group, "event_id": event.id, "topic": event.topic,
            "partition": event.partition, "offset": event.offset}).first()
        return row is not None

    def claim_many(self, session: Session, group: str,
                   events: list[IncomingEvent]) -> set[uuid.UUID]:
        """Insert the dedupe rows of a whole batch in one statement; returns the new ids.

        An id that appears twice in the batch is inserted (and returned) once.
        """
        if not events:
            return set()
        rows = session.execute(self.sql["claim_many"], {
            "group": group, "ids": [e.id for e in events], "topics": [e.topic for e in events],
            "partitions": [e.partition for e in events], "offsets": [e.offset for e in events],
        }).scalars().all()
        return set(rows)

    def purge(self, engine: Engine, older_than: dt.timedelta, group: str | None = None,
              batch: int = 5000) -> int:
        """Delete dedupe rows older than ``older_than`` in small transactions; returns count.

        An event redelivered after its row was purged would be applied again: keep rows
        longer than Kafka's retention of the topics this group reads.
        """
        params = {"seconds": older_than.total_seconds(), "group": group, "batch": batch}
        total = 0
        while True:
            with Session(engine) as session, session.begin():
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    self.sql["purge_batch"], params)
                deleted = int(result.rowcount or 0)
            total += deleted
            if deleted < batch:
                return total
