"""publish() against a real PostgreSQL: rows, rollback, every kind of target, validation."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import Engine, MetaData, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from outbox.errors import EventValidationError, PayloadTooLargeError
from outbox.publish import Event, publish, publish_async
from outbox.settings import Settings
from outbox.tables import outbox_table
from outbox.uuid7 import uuid7


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(sa_url(database_url))
    metadata = MetaData()
    outbox_table(metadata)
    metadata.create_all(eng, checkfirst=True)
    yield eng
    eng.dispose()


def rows(engine: Engine) -> list[dict[str, object]]:
    table = outbox_table(MetaData())
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.seq))]


def event(n: int = 0, **kw: object) -> Event:
    base: dict[str, object] = {"aggregate_type": "order", "aggregate_id": f"o-{n}",
                               "event_type": "OrderCreated", "payload": {"n": n}}
    return Event(**{**base, **kw})  # type: ignore[arg-type]


def test_publish_then_commit_writes_every_column(engine: Engine) -> None:
    ev = event(1, correlation_id="c-1", causation_id="cause-1", traceparent="00-abc-def-01",
               payload={"orderId": "o-1", "total": 12.5, "items": [{"sku": "a", "q": 2}]})
    with Session(engine) as session, session.begin():
        published = publish(session, ev)
    assert published == [ev]
    (row,) = rows(engine)
    assert row["id"] == ev.id
    assert ev.id.version == 7
    assert (row["aggregatetype"], row["aggregateid"], row["type"]) == ("order", "o-1",
                                                                       "OrderCreated")
    assert row["payload"] == {"orderId": "o-1", "total": 12.5, "items": [{"sku": "a", "q": 2}]}
    assert row["created_at"] == ev.created_at
    assert (row["correlation_id"], row["causation_id"], row["traceparent"]) == (
        "c-1", "cause-1", "00-abc-def-01")
    assert row["published_at"] is None
    assert row["attempts"] == 0
    assert 0 <= int(str(row["shard"])) < 256


def test_publish_then_rollback_leaves_nothing(engine: Engine) -> None:
    with Session(engine) as session:
        session.begin()
        publish(session, event(1), event(2))
        session.rollback()
    assert rows(engine) == []


def test_many_events_in_one_call_keep_their_order(engine: Engine) -> None:
    events = [event(n % 3, payload={"n": n}) for n in range(50)]
    with Session(engine) as session, session.begin():
        publish(session, *events)
    assert [r["id"] for r in rows(engine)] == [e.id for e in events]


def test_sqlalchemy_connection_and_custom_table(database_url: str) -> None:
    engine = create_engine(sa_url(database_url))
    settings = Settings(db_schema="svc", outbox_table="events_out")
    with engine.begin() as conn:
        conn.exec_driver_sql("create schema svc")
        metadata = MetaData()
        outbox_table(metadata, "events_out", "svc").create(conn)
        publish(conn, event(1), settings=settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from svc.events_out").scalar() == 1
    engine.dispose()


def test_psycopg_connection(engine: Engine, database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        publish(conn, event(1), event(2))
        conn.rollback()
        publish(conn, event(3))
        conn.commit()
    assert [r["aggregateid"] for r in rows(engine)] == ["o-3"]


def test_psycopg_pipeline_mode(engine: Engine, database_url: str) -> None:
    """What docs/publishing.md recommends for plain psycopg: the business write, the events
    and the commit in one flush. A rolled-back pipeline leaves nothing; an invalid event is
    refused before anything is sent, and the transaction goes on."""
    with psycopg.connect(database_url) as conn:
        with conn.pipeline():
            publish(conn, event(1), event(2))
            conn.rollback()
        with conn.pipeline():
            publish(conn, event(3), event(4))
            with pytest.raises(EventValidationError):
                publish(conn, event(5, aggregate_id=""))
            publish(conn, event(6))
            conn.commit()
    assert [r["payload"] for r in rows(engine)] == [{"n": 3}, {"n": 4}, {"n": 6}]


def test_async_session_and_async_psycopg(engine: Engine, database_url: str) -> None:
    async def main() -> None:
        aengine = create_async_engine(sa_url(database_url))
        async with AsyncSession(aengine) as session, session.begin():
            await publish_async(session, event(1))
        async with aengine.begin() as conn:
            await publish_async(conn, event(2))
        await aengine.dispose()
        async with await psycopg.AsyncConnection.connect(database_url) as aconn:
            await publish_async(aconn, event(3))
            await aconn.commit()

    asyncio.run(main())
    assert [r["aggregateid"] for r in rows(engine)] == ["o-1", "o-2", "o-3"]


class OrderCreated(BaseModel):
    orderId: str  # noqa: N815 - the wire name
    amount: float


def test_pydantic_payload(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        publish(session, event(1, payload=OrderCreated(orderId="o-1", amount=3.5)))
    assert rows(engine)[0]["payload"] == {"orderId": "o-1", "amount": 3.5}


@pytest.mark.parametrize(("kw", "field_name", "problem"), [
    ({"aggregate_type": ""}, "aggregate_type", "is empty"),
    ({"aggregate_id": "   "}, "aggregate_id", "is empty"),
    ({"event_type": "x" * 256}, "event_type", "256 characters"),
    ({"aggregate_id": "bad\udc80"}, "aggregate_id", "not valid UTF-8"),
    ({"correlation_id": "a\x00b"}, "correlation_id", "NUL"),
    ({"payload": {"x": object()}}, "payload", "not JSON-serialisable"),
    ({"payload": {"x": float("nan")}}, "payload", "not JSON-serialisable"),
    ({"payload": ["a", "list"]}, "payload", "must be a JSON object"),
    ({"payload": {"x": "a\x00"}}, "payload", "NUL"),
    ({"payload": {"x": "\ud800"}}, "payload", "not valid UTF-8"),
])
def test_validation_names_the_field(engine: Engine, kw: dict[str, object], field_name: str,
                                    problem: str) -> None:
    with Session(engine) as session, session.begin():
        with pytest.raises(EventValidationError) as info:
            publish(session, event(1), event(2, **kw))
        assert info.value.field == field_name
        assert problem in str(info.value)
        assert field_name in str(info.value)
    assert rows(engine) == []  # nothing of the call was written


def test_payload_over_the_limit(engine: Engine) -> None:
    settings = Settings(max_payload_bytes=1000)
    with Session(engine) as session, session.begin():
        publish(session, event(1, payload={"x": "a" * 900}), settings=settings)
        with pytest.raises(PayloadTooLargeError, match="limit is 1000 bytes"):
            publish(session, event(2, payload={"x": "é" * 600}), settings=settings)


def test_uuid7_is_time_ordered_and_versioned() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7}
    ms = ids[0].int >> 80
    assert abs(ms / 1000 - time.time()) < 5


def test_same_aggregate_waits_for_the_first_transaction(engine: Engine) -> None:
    """The advisory lock is really taken: a second publisher blocks until the first commits."""
    first_committed = threading.Event()
    order: list[str] = []

    def second() -> None:
        with Session(engine) as session, session.begin():
            publish(session, event(7, payload={"who": "second"}))
            order.append("second-inserted")

    with Session(engine) as session:
        session.begin()
        publish(session, event(7, payload={"who": "first"}))
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert order == []  # blocked on the aggregate's lock
        order.append("first-commit")
        session.commit()
        first_committed.set()
    t.join(10)
    assert order == ["first-commit", "second-inserted"]
    assert [r["payload"] for r in rows(engine)] == [{"who": "first"}, {"who": "second"}]


def test_other_aggregates_do_not_wait(engine: Engine) -> None:
    done = threading.Event()

    def other() -> None:
        with Session(engine) as session, session.begin():
            publish(session, event(8))
        done.set()

    with Session(engine) as session, session.begin():
        publish(session, event(9))
        t = threading.Thread(target=other)
        t.start()
        assert done.wait(5)
    t.join()


def test_created_at_is_naive_utc() -> None:
    ev = event(1)
    assert ev.created_at.tzinfo is None
    assert abs(ev.created_at - dt.datetime.now(dt.UTC).replace(tzinfo=None)) < dt.timedelta(
        seconds=5)
    assert isinstance(ev.id, uuid.UUID)


def test_many_events_take_one_lock_per_aggregate(engine: Engine) -> None:
    """The multi-event statement's lock CTE really runs: one advisory lock per aggregate."""
    from sqlalchemy import text

    from outbox.locks import AGGREGATE_LOCK_NAMESPACE

    with Session(engine) as session, session.begin():
        publish(session, event(1), event(2), event(1), event(3))
        # Two-key advisory locks show classid = namespace, objid = key, objsubid = 2.
        held = session.execute(text(
            "select count(*) from pg_locks where locktype = 'advisory' and objsubid = 2 "
            "and classid::int = :ns and pid = pg_backend_pid() and granted"),
            {"ns": AGGREGATE_LOCK_NAMESPACE}).scalar_one()
    assert held == 3


def test_a_multi_event_publisher_waits_for_a_single_event_one(engine: Engine) -> None:
    order: list[str] = []

    def second() -> None:
        with Session(engine) as session, session.begin():
            publish(session, event(5, payload={"who": "second"}), event(6))
            order.append("second-inserted")

    with Session(engine) as session:
        session.begin()
        publish(session, event(6, payload={"who": "first"}))
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert order == []  # blocked on aggregate o-6 even though o-5 is free
        order.append("first-commit")
        session.commit()
    t.join(10)
    assert order == ["first-commit", "second-inserted"]
