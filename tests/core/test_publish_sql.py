"""The SQL publish function against publish(): the same rules, messages, rows and order.

Both paths are run on the same events in one real PostgreSQL. Two of publish()'s rules
have no SQL counterpart because such a value cannot reach the function at all: a lone
surrogate and a NUL character (the driver cannot encode the first, PostgreSQL's text
refuses the second); the random events leave them out.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from outbox import publish_sql, rules
from outbox.errors import EventValidationError
from outbox.publish import Event, publish
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions
from tests.harness.kafka import consume_all, create_topic

Conn = psycopg.Connection[tuple[Any, ...]]
Outcome = tuple[str, str] | None  # (field, message) of a refusal, None when accepted

COLUMNS = ("aggregatetype, aggregateid, type, payload, correlation_id, causation_id, "
           "traceparent")


def sql_publish(conn: Conn, ev: Event, function: str = "outbox_publish") -> uuid.UUID:
    """What a writer in another language does: one call, in its own transaction."""
    payload = ev.payload
    row = conn.execute(
        f"select {function}(%s, %s, %s, %s, %s, %s, %s)",
        (ev.aggregate_type, ev.aggregate_id, ev.event_type,
         None if payload is None else Jsonb(payload), ev.correlation_id, ev.causation_id,
         ev.traceparent)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def python_outcome(conn: Conn, ev: Event, s: Settings) -> tuple[Outcome, uuid.UUID | None]:
    try:
        with conn.transaction():
            publish(conn, ev, settings=s)
    except EventValidationError as exc:
        return (exc.field, str(exc)), None
    return None, ev.id


def sql_outcome(conn: Conn, ev: Event) -> tuple[Outcome, uuid.UUID | None]:
    try:
        with conn.transaction():
            event_id = sql_publish(conn, ev)
    except psycopg.Error as exc:
        sqlstate, outcome = exc.sqlstate, (str(exc.diag.column_name),
                                           str(exc.diag.message_primary))
    else:
        return None, event_id
    assert sqlstate in ("22023", "54000"), outcome
    return outcome, None


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


def install(conn: Conn, s: Settings) -> None:
    for statement in publish_sql.create_sql(s):
        conn.execute(statement.encode())


# Text that exercises every text rule: blanks made of every kind of whitespace, lengths
# around the limit, characters outside the BMP (one character, four bytes).
BLANK = st.text(alphabet=rules.WHITESPACE, max_size=4)
WORDS = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                max_size=12)
TOPIC_SAFE = st.text(alphabet="abcXYZ09._-", min_size=1, max_size=10)
LONG = st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "🚀"]),
                 st.integers(250, 258))
VALID = st.text(alphabet="abé🚀 -_.\u3000", min_size=1, max_size=20).filter(str.strip)
# Mostly valid, so that most events reach the payload rules.
REQUIRED = st.one_of(VALID, VALID, VALID, VALID, TOPIC_SAFE, st.none(), BLANK, WORDS, LONG)
AGGREGATE_TYPE = st.one_of(TOPIC_SAFE, TOPIC_SAFE, TOPIC_SAFE, TOPIC_SAFE, REQUIRED,
                           st.sampled_from(["order", ".", "..", "ordér 🚀"]))
OPTIONAL = st.one_of(st.none(), st.just(""), WORDS, LONG)
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-7, 1e22, -0.0, 5e-324, 1.5e300, 0.1]), WORDS,
    st.builds(lambda n: "ü" * n, st.integers(0, 600)))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(WORDS, inner, max_size=4)), max_leaves=12)
OBJECTS = st.dictionaries(WORDS, JSON, max_size=6)
PAYLOAD = st.one_of(OBJECTS, OBJECTS, OBJECTS, JSON)


@settings(max_examples=800, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(aggregate_type=AGGREGATE_TYPE,
       aggregate_id=REQUIRED, event_type=REQUIRED, correlation_id=OPTIONAL,
       causation_id=OPTIONAL, traceparent=OPTIONAL, payload=PAYLOAD,
       limits=st.sampled_from([(1_048_576, 999_000), (300, 2_000), (2_000, 500)]),
       template=st.sampled_from(["{aggregatetype}-events", "{aggregatetype}"]))
def test_both_paths_agree_on_random_events(
        conn: Conn, aggregate_type: Any, aggregate_id: Any, event_type: Any,
        correlation_id: Any, causation_id: Any, traceparent: Any, payload: Any,
        limits: tuple[int, int], template: str) -> None:
    s = Settings(max_payload_bytes=limits[0], max_record_bytes=limits[1],
                 topic_template=template)
    if publish_sql.installed_body(conn, s) != publish_sql.expected_body(s):
        install(conn, s)
    ev = Event(aggregate_type, aggregate_id, event_type, payload, correlation_id,
               causation_id, traceparent)
    py, py_id = python_outcome(conn, ev, s)
    sq, sql_id = sql_outcome(conn, ev)
    assert py == sq
    event("accepted" if py is None else f"{py[0]} {py[1].split(': ', 1)[1][:16]}")
    if py is None:
        rows = conn.execute(f"select {COLUMNS} from outbox where id = any(%s) order by seq",
                            ([py_id, sql_id],)).fetchall()
        assert len(rows) == 2
        assert rows[0] == rows[1]


# One event per rule, and the message each path gives (the SQL function names
# publish()'s fields: aggregate_type for its `aggregatetype` argument, and so on).
GOOD: dict[str, Any] = {"aggregate_type": "order", "aggregate_id": "o-1",
                        "event_type": "OrderCreated", "payload": {"orderId": "o-1"}}
RULES = [
    ({"aggregate_type": None}, "aggregate_type", "is missing"),
    ({"aggregate_id": None}, "aggregate_id", "is missing"),
    ({"event_type": None}, "event_type", "is missing"),
    ({"aggregate_id": " \t\u3000"}, "aggregate_id", "is empty"),
    ({"event_type": "x" * 256}, "event_type", "is 256 characters long; the limit is 255"),
    ({"correlation_id": "é" * 300}, "correlation_id",
     "is 300 characters long; the limit is 255"),
    ({"causation_id": "c" * 256}, "causation_id", "is 256 characters long"),
    ({"traceparent": "t" * 256}, "traceparent", "is 256 characters long"),
    ({"aggregate_type": "ordér 🚀"}, "aggregate_type",
     "routes to topic 'ordér 🚀-events' (topic template '{aggregatetype}-events'), which "
     "Kafka refuses"),
    ({"payload": None}, "payload", "must be a JSON object, got null"),
    ({"payload": ["a"]}, "payload", "must be a JSON object, got array"),
    ({"payload": "text"}, "payload", "must be a JSON object, got string"),
    ({"payload": {"x": "a" * 2000}}, "payload",
     "is 2008 bytes as JSON; the limit is 2000 bytes (OUTBOX_MAX_PAYLOAD_BYTES)"),
    ({"payload": {"x": [1e-300] * 8}}, "payload", "bytes as JSON; the limit is 2000 bytes"),
    ({"payload": {"x": "a" * 1900}, "aggregate_id": "k" * 200}, "payload",
     "makes a Kafka record of 2167 bytes with its key and headers; the limit is 2100 bytes "
     "(OUTBOX_MAX_RECORD_BYTES)"),
]


@pytest.mark.parametrize(("kw", "field_name", "problem"), RULES)
def test_each_rule_gives_the_same_error_in_both_paths(
        conn: Conn, kw: dict[str, Any], field_name: str, problem: str) -> None:
    s = Settings(max_payload_bytes=2000, max_record_bytes=2100)
    install(conn, s)
    ev = Event(**{**GOOD, **kw})
    py, _ = python_outcome(conn, ev, s)
    sq, _ = sql_outcome(conn, ev)
    assert py is not None
    assert py[0] == field_name
    assert problem in py[1]
    assert py[1].startswith(f"outbox event field '{field_name}': ")
    assert sq == py
    assert conn.execute("select count(*) from outbox").fetchone() == (0,)


def test_a_sql_published_row_has_the_shape_of_a_published_one(conn: Conn) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    py_event = Event("order", "o-1", "OrderCreated", {"orderId": "o-1", "n": [1, 2.5]},
                     "corr", "cause", "00-ab-cd-01")
    publish(conn, py_event)
    sql_id = sql_publish(conn, Event(**{**py_event.__dict__, "id": uuid.uuid4()}))
    # Optional arguments default to null; named arguments work for every language.
    named = conn.execute("select outbox_publish(aggregatetype => 'order', aggregateid => "
                         "'o-2', type => 'T', payload => '{}')").fetchone()
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    rows = conn.execute("select id, created_at, txid is not null, shard, published_at, "
                        "attempts, " + COLUMNS + " from outbox order by seq").fetchall()
    assert [r[0] for r in rows] == [py_event.id, sql_id, named and named[0]]
    py_row, sql_row, named_row = rows
    assert sql_row[2:] == py_row[2:]
    assert named_row[-3:] == (None, None, None)
    for event_id, created_at, *_ in rows:
        assert event_id.version == 7
        assert before - dt.timedelta(seconds=1) <= created_at <= after + dt.timedelta(seconds=1)
        # The id's 48-bit timestamp is created_at's millisecond (UTC).
        ms = (created_at - dt.datetime(1970, 1, 1)) // dt.timedelta(milliseconds=1)
        assert abs((event_id.int >> 80) - ms) <= 1


def test_the_sql_function_takes_publish_lock(conn: Conn, database_url: str) -> None:
    """A publish() transaction on an aggregate makes a SQL writer of it wait, and back."""
    for first, second in (("python", "sql"), ("sql", "python")):
        done = threading.Event()

        def write(how: str, c: Conn) -> None:
            ev = Event("order", "o-lock", "T", {"who": how})
            if how == "python":
                publish(c, ev)
            else:
                sql_publish(c, ev)

        def late(how: str = second, done: threading.Event = done) -> None:
            with psycopg.connect(database_url) as other:
                write(how, other)
                other.commit()
            done.set()

        with psycopg.connect(database_url) as tx:
            write(first, tx)
            thread = threading.Thread(target=late)
            thread.start()
            assert not done.wait(0.7), f"{second} did not wait for {first}'s lock"
            tx.commit()
        assert done.wait(10)
        thread.join()
    whos = [r[0] for r in conn.execute("select payload->>'who' from outbox order by seq")]
    assert whos == ["python", "sql", "sql", "python"]


AGGREGATES = ["a", "b", "c"]


def test_mixed_writers_keep_commit_order_per_aggregate_through_the_relay(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    """Eight writers, each transaction publishing with publish() or the SQL function at
    random, then fixing its counter value (commit order, see test_ordering.py) in the same
    transaction: per aggregate, the relay's records are in commit order."""
    with psycopg.connect(database_url) as c:
        c.execute("create table commit_counter (aggregate text primary key, n int not null)")
        c.execute("insert into commit_counter select unnest(%s::text[]), 0", (AGGREGATES,))
    errors: list[BaseException] = []
    used: set[str] = set()

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with psycopg.connect(database_url) as c:
                for _ in range(25):
                    aggregate = rnd.choice(AGGREGATES)
                    ev = Event("thing", aggregate, "Happened", {"n": -1})
                    how = rnd.choice(["python", "sql"])
                    used.add(how)
                    event_id = publish(c, ev)[0].id if how == "python" else sql_publish(c, ev)
                    c.execute("select pg_sleep(%s)", (rnd.uniform(0, 0.01),))
                    row = c.execute("update commit_counter set n = n + 1 where aggregate = %s "
                                    "returning n", (aggregate,)).fetchone()
                    assert row is not None
                    c.execute("update outbox set payload = jsonb_build_object('n', %s::int, "
                              "'how', %s::text) where id = %s", (row[0], how, event_id))
                    c.commit()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert used == {"python", "sql"}
    create_topic(kafka_bootstrap, f"{topic}-thing", partitions=3)
    relay = Relay(Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                           topic_template=topic + "-{aggregatetype}"),
                  RelayOptions(poll_interval=0.2))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        records = consume_all(kafka_bootstrap, f"{topic}-thing", expected=200, timeout=90)
    finally:
        relay.request_stop()
        thread.join(30)
    assert len(records) == 200
    seen: dict[bytes, list[int]] = defaultdict(list)
    import json

    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        seen[record.key or b""].append(json.loads(record.value or b"{}")["n"])
    for key, counters in seen.items():
        assert counters == list(range(1, len(counters) + 1)), f"{key!r}: not commit order"


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=PAYLOAD, aggregate_id=st.one_of(TOPIC_SAFE, LONG),
       limits=st.sampled_from([(300, 2_000), (2_000, 500), (150, 400)]))
def test_both_paths_agree_on_random_payloads(conn: Conn, payload: Any, aggregate_id: str,
                                             limits: tuple[int, int]) -> None:
    """Valid text fields, so every example reaches the payload and size rules."""
    s = Settings(max_payload_bytes=limits[0], max_record_bytes=limits[1])
    if publish_sql.installed_body(conn, s) != publish_sql.expected_body(s):
        install(conn, s)
    ev = Event("order", aggregate_id[:255], "Happened", payload, "c-1", None, "00-ab-01")
    py, py_id = python_outcome(conn, ev, s)
    sq, sql_id = sql_outcome(conn, ev)
    assert py == sq
    event("accepted" if py is None else f"{py[0]} {py[1].split(': ', 1)[1][:16]}")
    if py is None:
        rows = conn.execute(f"select {COLUMNS} from outbox where id = any(%s) order by seq",
                            ([py_id, sql_id],)).fetchall()
        assert rows[0] == rows[1]
