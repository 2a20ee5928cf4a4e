"""The inbox: one row per (consumer group, event id) applied, in the handler's transaction."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

from sqlalchemy import CursorResult, Engine, Table, delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from consumers.message import IncomingEvent
from outbox.settings import Settings, qualified
from outbox.tables import tables_for


@functools.cache
def _inbox(schema: str, name: str) -> Table:
    return tables_for(Settings(db_schema=schema, inbox_table=name))[1]


class InboxStore:
    """Records which events a consumer group has applied."""

    def __init__(self, settings: Settings) -> None:
        self.table = _inbox(settings.db_schema, settings.inbox_table)
        # Schema and table names passed check_identifier when the table was defined.
        name = qualified(settings.db_schema, settings.inbox_table)
        self._claim_many = text(
            f'insert into {name} (consumer_group, event_id, topic, partition, "offset") '
            "select :group, u.event_id, u.topic, u.partition, u.offset from unnest("
            "cast(:ids as uuid[]), cast(:topics as text[]), cast(:partitions as int[]), "
            "cast(:offsets as bigint[])) as u(event_id, topic, partition, \"offset\") "
            "on conflict (consumer_group, event_id) do nothing returning event_id")

    def claim(self, session: Session, group: str, event: IncomingEvent) -> bool:
        """Insert the dedupe row; False if this group already applied the event.

        Runs in the handler's transaction: if the handler fails, the row goes with it.
        """
        row = session.execute(
            insert(self.table)
            .values(consumer_group=group, event_id=event.id, topic=event.topic,
                    partition=event.partition, offset=event.offset)
            .on_conflict_do_nothing(index_elements=["consumer_group", "event_id"])
            .returning(self.table.c.event_id)
        ).first()
        return row is not None

    def claim_many(self, session: Session, group: str,
                   events: list[IncomingEvent]) -> set[uuid.UUID]:
        """Insert the dedupe rows of a whole batch in one statement; returns the new ids.

        An id that appears twice in the batch is inserted (and returned) once.
        """
        if not events:
            return set()
        # One fixed statement over arrays, not a VALUES list of len(events) rows: the
        # latter is compiled anew for every batch size and that compile was the bulk of
        # the dedupe cost in bench/consumer.py.
        rows = session.execute(self._claim_many, {
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
        cutoff = text("(now() at time zone 'utc') - make_interval(secs => :secs)").bindparams(
            secs=older_than.total_seconds())
        total = 0
        while True:
            with Session(engine) as session, session.begin():
                victims = select(self.table.c.consumer_group, self.table.c.event_id).where(
                    self.table.c.processed_at < cutoff).limit(batch)
                if group is not None:
                    victims = victims.where(self.table.c.consumer_group == group)
                keys = victims.subquery()
                result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                    delete(self.table).where(
                        self.table.c.consumer_group == keys.c.consumer_group,
                        self.table.c.event_id == keys.c.event_id))
                deleted = int(result.rowcount or 0)
            total += deleted
            if deleted < batch:
                return total
