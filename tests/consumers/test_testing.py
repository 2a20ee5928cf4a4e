"""outbox.testing.TestClient: handlers against the real database, without Kafka.

Sync and async applications alike: a delivery applies, a redelivery is a duplicate, a
payload that does not validate is dead-lettered, a failing handler raises (or reports),
and nothing is left in the database once the client closes.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from consumers import AsyncPublisher, Consumer, IncomingEvent, Publisher
from outbox.publish import Event
from outbox.settings import Settings
from outbox.testing import TestClient

TABLE = "create table if not exists counted (event_id uuid, n int)"


class Counted(BaseModel):
    __aggregate_type__: ClassVar[str] = "count"
    n: int


class Doubled(BaseModel):
    __aggregate_type__: ClassVar[str] = "count"
    n: int


def sync_app(settings: Settings) -> Consumer:
    app = Consumer(settings, "g-test-client")

    @app.handler("count-events", "Counted")
    def count(counted: Counted, envelope: IncomingEvent, session: Session,
              publisher: Publisher) -> None:
        if counted.n < 0:
            raise ValueError("negative")
        session.execute(text("insert into counted values (:id, :n)"),
                        {"id": envelope.id, "n": counted.n})
        publisher.publish(Doubled(n=counted.n * 2), aggregate_id=envelope.key or "")

    return app


def async_app(settings: Settings) -> Consumer:
    app = Consumer(settings, "g-test-client")

    @app.handler("count-events", "Counted")
    async def count(counted: Counted, envelope: IncomingEvent, session: AsyncSession,
                    publisher: AsyncPublisher) -> None:
        if counted.n < 0:
            raise ValueError("negative")
        await session.execute(text("insert into counted values (:id, :n)"),
                              {"id": envelope.id, "n": counted.n})
        await publisher.publish(Doubled(n=counted.n * 2), aggregate_id=envelope.key or "")

    return app


@pytest.fixture(params=["sync", "async"])
def app(request: pytest.FixtureRequest, database_url: str) -> Consumer:
    with psycopg.connect(database_url) as conn:
        conn.execute(TABLE)
    settings = Settings(database_url=database_url)
    return sync_app(settings) if request.param == "sync" else async_app(settings)


def rows(database_url: str, sql: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0


def test_deliver_applies_publishes_dedupes_and_leaves_nothing_behind(
        app: Consumer, database_url: str) -> None:
    with TestClient(app) as client:
        first = client.deliver("count-events", Counted(n=21), key="c-1")
        assert first.status == "applied"
        assert client.query("select n from counted")[0].n == 21
        [doubled] = client.published()
        assert (doubled.event_type, doubled.aggregate_id, doubled.payload) == (
            "Doubled", "c-1", {"n": 42})
        assert doubled.causation_id == str(first.event_id)
        assert client.inbox() == [first.event_id]
        again = client.deliver_again(first)
        assert again.status == "duplicate" and again.event_id == first.event_id
        assert len(client.query("select * from counted")) == 1
        assert len(client.published()) == 1
    assert rows(database_url, "select count(*) from counted") == 0
    assert rows(database_url, "select count(*) from outbox") == 0
    assert rows(database_url, "select count(*) from inbox") == 0


def test_an_event_is_delivered_as_the_relay_would_publish_it(app: Consumer) -> None:
    event = Event.of(Counted(n=2), aggregate_id="c-9", correlation_id="corr")
    with TestClient(app) as client:
        result = client.deliver_event(event)
        assert (result.status, result.event_id, result.topic) == ("applied", event.id,
                                                                  "count-events")
        assert dict(result.headers)["correlationId"] == b"corr"
        assert client.published()[0].correlation_id == "corr"  # carried on


def test_poison_and_failures_are_reported_and_never_recorded(app: Consumer) -> None:
    with TestClient(app) as client:
        bad = client.deliver("count-events", {"eventType": "Counted", "n": "many"})
        assert (bad.status, bad.reason) == ("dead-lettered", "invalid-payload")
        assert "Input should be a valid integer" in str(bad.error)
        unknown = client.deliver("count-events", {"eventType": "Nope"})
        assert (unknown.status, unknown.reason) == ("dead-lettered", "unknown-event-type")
        assert client.deliver("count-events", b"not json",
                              event_type="Counted").reason == "undecodable-value"
        with pytest.raises(ValueError, match="negative"):
            client.deliver("count-events", Counted(n=-1))
        failed = client.deliver("count-events", Counted(n=-1), raise_errors=False)
        assert (failed.status, failed.reason) == ("failed", "handler-failed")
        assert client.inbox() == [] and client.published() == []
        assert client.deliver("count-events", Counted(n=1)).status == "applied"


def test_a_closed_client_says_how_to_open_it(app: Consumer) -> None:
    client = TestClient(app)
    with pytest.raises(RuntimeError, match="with TestClient"):
        client.deliver("count-events", Counted(n=1), event_id=uuid.uuid4())
