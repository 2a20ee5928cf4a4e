"""A test client for your handlers: your real database, no Kafka.

    from outbox.testing import TestClient

    def test_reserves_stock(database_url):
        with TestClient(inventory.consumer(settings)) as client:
            result = client.deliver("order-events", {"eventType": "OrderCreated", ...})
            assert result.status == "applied"
            assert client.published()[0].event_type == "InventoryReserved"
            assert client.deliver_again(result).status == "duplicate"   # the inbox dedupes

Everything a delivery does happens in ONE transaction that the client rolls back when it
closes: the handlers' writes, the inbox rows and the published outbox rows are visible to
the client (``query``, ``published``, ``inbox``) and to nothing else, and leave nothing
behind. A delivery goes through the consumer's own code: the message is decoded and
routed as one from Kafka would be (a payload failing its model is ``dead-lettered`` with
pydantic's message), then applied on the consumer's careful path (inbox row and handler
in a savepoint, sync or async handlers alike). What it cannot show: effects of a
COMMIT (deferred constraints, other connections seeing the rows) — the transaction is
never committed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Row, create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from consumers.batch import BatchApplier
from consumers.health import ConsumerHealth
from consumers.message import Received
from consumers.metrics import ConsumerMetrics
from consumers.routing import Routed, route
from consumers.runtime import Consumer
from outbox.publish import Event, event_type_of
from outbox.record import OutboxRow, to_record
from outbox.settings import qualified
from outbox.uuid7 import uuid7


@dataclass(frozen=True)
class Delivery:
    """What became of one delivered event.

    ``status``: ``applied`` (the handler ran, its transaction part is in), ``duplicate``
    (the inbox already had the id: the handler did not run), ``dead-lettered`` (the
    message is poison: ``reason`` as in the ``dlq.reason`` header), or ``failed`` (the
    handler raised; only with ``raise_errors=False``).
    """

    status: str
    event_id: uuid.UUID | None
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    reason: str | None = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Published:
    """An outbox row the handlers wrote during the test."""

    id: uuid.UUID
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Any
    correlation_id: str | None
    causation_id: str | None


class TestClient:
    """Delivers events to ``app``'s handlers inside a transaction rolled back at the end.

    ``database_url`` (or ``engine``): where to run, by default the app's own engine.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, app: Consumer, *, database_url: str | None = None,
                 engine: Engine | None = None) -> None:
        self.app = app
        self._engine = engine or (create_engine(_sqlalchemy_url(database_url))
                                  if database_url else app.engine)
        self._own_engine = self._engine is not app.engine
        self.applier = BatchApplier(self._engine, app.inbox, app.group, app.options,
                                    ConsumerMetrics(), ConsumerHealth(app.options.stall_after),
                                    app.settings)
        self._offsets = itertools.count()
        self._conn: Connection | None = None
        self._runner: asyncio.Runner | None = None
        self._async_engine: AsyncEngine | None = None
        self._async_conn: AsyncConnection | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> TestClient:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Begin the transaction every delivery runs in (``with`` does it for you)."""
        if self.app.is_async:
            self._runner = asyncio.Runner()
            self._async_engine = create_async_engine(
                self._engine.url.render_as_string(hide_password=False))
            self._async_conn = self._runner.run(self._async_begin(self._async_engine))
            conn = self._async_conn
            self.applier.async_sessions = lambda: AsyncSession(
                bind=conn, join_transaction_mode="create_savepoint")
        else:
            self._conn = self._engine.connect()
            self._conn.begin()
            sync = self._conn
            self.applier.sessions = lambda: Session(
                bind=sync, join_transaction_mode="create_savepoint")

    @staticmethod
    async def _async_begin(engine: AsyncEngine) -> AsyncConnection:
        conn = await engine.connect()
        await conn.begin()
        return conn

    def close(self) -> None:
        """Roll everything back and release the connections."""
        if self._conn is not None:
            self._conn.rollback()
            self._conn.close()
            self._conn = None
        if self._runner is not None:
            if self._async_conn is not None:
                self._runner.run(self._async_conn.rollback())
                self._runner.run(self._async_conn.close())
            if self._async_engine is not None:
                self._runner.run(self._async_engine.dispose())
            self._runner.close()
            self._runner = self._async_conn = self._async_engine = None
        if self._own_engine:
            self._engine.dispose()

    # ------------------------------------------------------------------ delivering
    def deliver(self, topic: str, payload: Mapping[str, Any] | BaseModel | bytes, *,
                event_type: str | None = None, key: str | bytes | None = "key",
                event_id: uuid.UUID | None = None,
                headers: Sequence[tuple[str, bytes | None]] = (),
                raise_errors: bool = True) -> Delivery:
        """Deliver one record to ``topic`` as Kafka would hand it to the consumer.

        ``payload``: a dict or model (encoded as JSON) or raw bytes. ``event_type``: the
        ``eventType`` header (default: a model's event type, else the payload's
        ``eventType``). ``event_id``: the ``id`` header (default: a new one). A handler
        that raises re-raises here unless ``raise_errors=False``.
        """
        if isinstance(payload, BaseModel):
            value = payload.model_dump_json(by_alias=True).encode()
            event_type = event_type or event_type_of(type(payload))
        elif isinstance(payload, bytes):
            value = payload
        else:
            value = json.dumps(dict(payload)).encode()
            event_type = event_type or _opt_str(payload.get("eventType"))
        record: list[tuple[str, bytes | None]] = [("id", str(event_id or uuid7()).encode())]
        if event_type:
            record.append(("eventType", event_type.encode()))
        raw_key = key.encode() if isinstance(key, str) else key
        return self._deliver(topic, raw_key, value, [*record, *headers], raise_errors)

    def deliver_event(self, event: Event, *, raise_errors: bool = True) -> Delivery:
        """Deliver ``event`` as the relay would publish it (topic from the app's topic
        template, key, JSON value and headers of the pinned record format)."""
        payload = event.payload
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json", by_alias=True)
        rec = to_record(OutboxRow(event.id, event.aggregate_type, event.aggregate_id,
                                  event.event_type, payload, event.created_at,
                                  event.correlation_id, event.causation_id, event.traceparent,
                                  event.tracestate),
                        self.app.settings.topic_template)
        return self._deliver(rec.topic, rec.key, rec.value, list(rec.headers), raise_errors)

    def deliver_again(self, delivery: Delivery, *, raise_errors: bool = True) -> Delivery:
        """Deliver the same record once more (a redelivery: same event id)."""
        return self._deliver(delivery.topic, delivery.key, delivery.value,
                             list(delivery.headers), raise_errors)

    def _deliver(self, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes | None]], raise_errors: bool) -> Delivery:
        if self._conn is None and self._async_conn is None:
            raise RuntimeError("the TestClient is not open: use `with TestClient(app) as "
                               "client:` (or call open())")
        msg = Received(topic, 0, next(self._offsets), int(time.time() * 1000), key, value,
                       headers)
        verdict = route(msg, self.app.handlers, self.app.options.max_message_bytes)
        record = (topic, key, value, tuple(headers))
        if not isinstance(verdict, Routed):
            return Delivery("dead-lettered", None, *record, verdict.reason, verdict.exception)
        event_id = verdict.event.id
        seen = event_id in self.inbox()
        if self._runner is not None:
            _applied, failed = self._runner.run(self.applier.careful_async([(msg, verdict)]))
        else:
            _applied, failed = self.applier.careful([(msg, verdict)])
        if failed is not None:
            if raise_errors:
                raise failed[1].exception
            return Delivery("failed", event_id, *record, failed[1].reason,
                            failed[1].exception)
        return Delivery("duplicate" if seen else "applied", event_id, *record)

    # ------------------------------------------------------------------ looking
    def query(self, sql: str, **params: Any) -> list[Row[Any]]:
        """Rows of ``sql`` in the test's transaction (what the handlers wrote)."""
        if self._runner is not None and self._async_conn is not None:
            conn = self._async_conn

            async def fetch() -> list[Row[Any]]:
                return list((await conn.execute(text(sql), params)).all())

            return self._runner.run(fetch())
        if self._conn is None:
            raise RuntimeError("the TestClient is not open")
        return list(self._conn.execute(text(sql), params).all())

    def published(self) -> list[Published]:
        """The events written to the app's outbox during the test, oldest first."""
        s = self.app.settings
        rows = self.query(
            "select id, aggregatetype, aggregateid, type, payload, correlation_id, "
            f"causation_id from {qualified(s.db_schema, s.outbox_table)} order by seq")
        return [Published(*tuple(row)) for row in rows]

    def inbox(self) -> list[uuid.UUID]:
        """The event ids the app's consumer group has recorded as applied."""
        s = self.app.settings
        rows = self.query(f"select event_id from {qualified(s.db_schema, s.inbox_table)} "
                          "where consumer_group = :group order by processed_at",
                          group=self.app.group)
        return [row[0] for row in rows]


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


__all__ = ["Delivery", "Published", "TestClient"]
