"""The park table of ``outbox forward``: events waiting for a retry, per route and key.

The statements live in ``forward.sql`` (named blocks); this module binds them to the
configured schema and table and converts rows to and from events.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, TextClause, text
from sqlalchemy.orm import Session

from consumers.forward_http import Attempt
from consumers.message import IncomingEvent
from outbox.settings import Settings, qualified, quote_ident
from outbox.sql import render, statements_in

SQL_FILE = Path(__file__).with_name("forward.sql")


def event_key(event: IncomingEvent) -> str:
    """What per-key order is kept by: the Kafka key, or the event id for a record without
    one (such records carry no order to keep)."""
    return event.key if event.key is not None else str(event.id)


def event_value(event: IncomingEvent) -> bytes:
    """The record value as stored and dead-lettered: the payload as compact JSON."""
    return json.dumps(dict(event.payload), separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Parked:
    """A claimed row: the event, its route, how often it was tried."""

    seq: int
    route: str
    event: IncomingEvent
    attempts: int


class ParkStore:
    """Park, claim, reschedule and settle events of the routes in one table."""

    def __init__(self, settings: Settings, table: str) -> None:
        self.table = qualified(settings.db_schema, table)
        names = {"table": self.table, "index": quote_ident(f"{table}_route_key_seq")}
        bodies = {name: render(body, **names) for name, body in statements_in(SQL_FILE).items()}
        self.sql: dict[str, TextClause] = {name: text(body) for name, body in bodies.items()}
        self._create = bodies["create"]

    def create(self, engine: Engine) -> None:
        """Create the table and its index if they do not exist (idempotent)."""
        with engine.begin() as conn:
            conn.exec_driver_sql(self._create)

    def parked_keys(self, session: Session, route: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` have an event waiting on ``route`` (later ones wait behind)."""
        rows = session.execute(self.sql["parked_keys"], {"route": route, "keys": keys})
        return {str(key) for key in rows.scalars()}

    def park(self, session: Session, route: str, event: IncomingEvent,
             attempt: Attempt | None = None, delay: float | None = None) -> None:
        """Park ``event``: tried once already (``attempt``, retry after ``delay``) or not
        yet (due as soon as it is the oldest of its key)."""
        headers = list(event.headers.items())
        session.execute(self.sql["park"], {
            "route": route, "key": event_key(event), "event_id": event.id,
            "event_type": event.type, "topic": event.topic, "partition": event.partition,
            "offset": event.offset, "timestamp_ms": event.timestamp_ms,
            "kafka_key": event.key.encode() if event.key is not None else None,
            "value": event_value(event), "header_names": [h for h, _ in headers],
            "header_values": [v for _, v in headers],
            "attempts": 1 if attempt is not None else 0,
            "delay": delay if attempt is not None else None,
            **_last(attempt)})

    def claim_due(self, session: Session, routes: list[str]) -> Parked | None:
        """Lock the oldest due event of some key (skipping keys another worker holds)."""
        row = session.execute(self.sql["claim_due"], {"routes": routes}).first()
        if row is None:
            return None
        payload = json.loads(bytes(row.value))
        headers = dict(zip(row.header_names, (bytes(v) for v in row.header_values),
                           strict=True))
        key = bytes(row.kafka_key).decode("utf-8", "replace") if row.kafka_key else None
        event = IncomingEvent(
            id=uuid.UUID(str(row.event_id)), type=row.event_type, payload=payload, key=key,
            topic=row.topic, partition=row.partition, offset=row.offset,
            timestamp_ms=row.timestamp_ms, headers=headers)
        return Parked(row.seq, row.route, event, row.attempts)

    def reschedule(self, session: Session, parked: Parked, attempt: Attempt,
                   delay: float) -> None:
        """Count the failed attempt; try again after ``delay`` seconds."""
        session.execute(self.sql["reschedule"], {
            "seq": parked.seq, "attempts": parked.attempts + 1, "delay": delay,
            **_last(attempt)})

    def settle(self, session: Session, parked: Parked) -> None:
        """Remove a delivered (or dead-lettered) event: the next of its key is due."""
        session.execute(self.sql["settle"], {"seq": parked.seq})

    def next_due(self, session: Session, routes: list[str]) -> float | None:
        """Seconds until the earliest waiting retry (negative: overdue; None: none)."""
        value = session.execute(self.sql["next_due"], {"routes": routes}).scalar()
        return float(value) if value is not None else None

    def counts(self, session: Session, routes: list[str]) -> dict[str, int]:
        """Parked events per route."""
        rows = session.execute(self.sql["counts"], {"routes": routes}).all()
        found = {str(route): int(count) for route, count in rows}
        return {route: found.get(route, 0) for route in routes}


def _last(attempt: Attempt | None) -> dict[str, Any]:
    if attempt is None:
        return {"last_status": None, "last_error": None, "last_latency_ms": None}
    return {"last_status": attempt.status, "last_error": attempt.summary()[:2000],
            "last_latency_ms": attempt.latency * 1000}


__all__ = ["ParkStore", "Parked", "event_key", "event_value"]
