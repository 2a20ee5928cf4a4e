"""The inbox: one row per (consumer group, event id) applied, in the handler's transaction.

The statements are in ``inbox.sql`` (named blocks, each pasteable into ``EXPLAIN``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import psycopg.errors
import sqlalchemy.exc
from sqlalchemy import CursorResult, Engine, TextClause, text
from sqlalchemy.orm import Session

from consumers.message import IncomingEvent
from outbox.errors import ConfigurationError
from outbox.settings import Settings, qualified
from outbox.sql import render, statements_in

SQL_FILE = Path(__file__).with_name("inbox.sql")
HOW = "the consumer role of `outbox db roles --sql` has them"


class InboxUnusableError(ConfigurationError):
    """The inbox table is missing or the role may not use it: the consumer's configuration,
    never a message's fault (nothing is retried or dead-lettered for it; the consumer
    stops with exit 3 and the messages wait for it, uncommitted)."""


class InboxStore:
    """Records which events a consumer group has applied."""

    def __init__(self, settings: Settings) -> None:
        # Settings checked both names (check_identifier); qualified() quotes them.
        name = self.name = qualified(settings.db_schema, settings.inbox_table)
        self.sql: dict[str, TextClause] = {
            key: text(render(body, inbox=name)) for key, body in statements_in(SQL_FILE).items()}

    def problem(self, engine: Engine) -> str | None:
        """Why this group cannot dedupe in the inbox as the engine's role, or None."""
        with engine.connect() as conn:
            why = conn.execute(self.sql["unusable"], {"name": self.name}).scalar()
            user = conn.exec_driver_sql("select current_user").scalar()
        if why == "missing":
            return f"no inbox table {self.name}: run `outbox db upgrade` (same --schema) first"
        if why == "denied":
            return (f"role {user} may not use the inbox {self.name}: grant it SELECT, INSERT "
                    f"({HOW})")
        return None

    def _unusable(self, exc: sqlalchemy.exc.DBAPIError) -> InboxUnusableError | None:
        driver = exc.orig
        said = str(driver).splitlines()[0] if str(driver) else type(driver).__name__
        if isinstance(driver, psycopg.errors.UndefinedTable):
            return InboxUnusableError(f"the inbox {self.name} is gone: {said}; run "
                                      "`outbox db upgrade` (same --schema)")
        if isinstance(driver, psycopg.errors.InsufficientPrivilege):
            return InboxUnusableError(f"the inbox {self.name} refused this consumer: {said}; "
                                      f"grant it SELECT, INSERT ({HOW})")
        return None

    def claim(self, session: Session, group: str, event: IncomingEvent) -> bool:
        """Insert the dedupe row; False if this group already applied the event.

        Runs in the handler's transaction: if the handler fails, the row goes with it.
        """
        try:
            row = session.execute(self.sql["claim"], {
                "group": group, "event_id": event.id, "topic": event.topic,
                "partition": event.partition, "offset": event.offset}).first()
        except sqlalchemy.exc.ProgrammingError as exc:
            raise self._unusable(exc) or exc from exc
        return row is not None

    def claim_many(self, session: Session, group: str,
                   events: list[IncomingEvent]) -> set[uuid.UUID]:
        """Insert the dedupe rows of a whole batch in one statement; returns the new ids.

        An id that appears twice in the batch is inserted (and returned) once.
        """
        if not events:
            return set()
        try:
            rows = session.execute(self.sql["claim_many"], {
                "group": group, "ids": [e.id for e in events],
                "topics": [e.topic for e in events],
                "partitions": [e.partition for e in events],
                "offsets": [e.offset for e in events],
            }).scalars().all()
        except sqlalchemy.exc.ProgrammingError as exc:
            raise self._unusable(exc) or exc from exc
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
