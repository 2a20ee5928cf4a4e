"""Per aggregate, the relay's read order (seq) is commit order — also under concurrency.

How commit order is observed: in the same transaction as its publish(), each writer bumps
a per-aggregate counter row (`update … set n = n + 1 returning n`). The row lock is held
until commit, so the next writer of that aggregate reads the value only after the previous
one committed: counter order is commit order. The relay reads rows ordered by seq; the
test checks that, per aggregate, seq order and counter order agree.
"""

from __future__ import annotations

import random
import threading
from collections import defaultdict

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from outbox.publish import Event, publish

AGGREGATES = ["a", "b", "c"]


def _prepare(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("create table commit_counter (aggregate text primary key, n int not null)")
        conn.execute("insert into commit_counter select unnest(%s::text[]), 0", (AGGREGATES,))


def _commit_order_per_aggregate(url: str) -> dict[str, list[int]]:
    """Per aggregate, the counter values of its rows in seq (relay) order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("select aggregateid, (payload->>'n')::int from outbox order by seq")
        seen: dict[str, list[int]] = defaultdict(list)
        for aggregate, n in rows:
            seen[aggregate].append(n)
    return seen


def test_concurrent_writers_on_the_same_aggregates(database_url: str) -> None:
    _prepare(database_url)
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"),
                           pool_size=10)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(25):
                aggregate = rnd.choice(AGGREGATES)
                with Session(engine) as session, session.begin():
                    # The counter value is only known after commit-order is decided, so the
                    # event carries a placeholder that is filled in below, in the same tx.
                    (event,) = publish(session, Event("thing", aggregate, "Happened", {"n": -1}))
                    session.execute(text("select pg_sleep(:s)"), {"s": rnd.uniform(0, 0.01)})
                    n = session.execute(text(
                        "update commit_counter set n = n + 1 where aggregate = :a returning n"),
                        {"a": aggregate}).scalar_one()
                    session.execute(text(
                        "update outbox set payload = jsonb_build_object('n', :n) where id = :id"),
                        {"n": n, "id": event.id})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    engine.dispose()
    assert errors == []
    seen = _commit_order_per_aggregate(database_url)
    assert sum(len(v) for v in seen.values()) == 200
    for aggregate, counters in seen.items():
        assert counters == sorted(counters), f"aggregate {aggregate}: seq order != commit order"
        assert counters == list(range(1, len(counters) + 1))


def _choreography(url: str, use_publish: bool) -> dict[str, list[int]]:
    """T1 inserts first, T2 inserts second but commits first (if it can)."""
    _prepare(url)
    t1_inserted = threading.Event()
    t2_done = threading.Event()

    def insert(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        if use_publish:
            publish(conn, Event("thing", "a", "Happened", {"n": -1}))
        else:  # what a naive writer does: a plain insert, no lock
            conn.execute("insert into outbox (id, aggregatetype, aggregateid, type, payload) "
                         "values (gen_random_uuid(), 'thing', 'a', 'Happened', '{\"n\": -1}')")

    def bump_and_commit(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        row = conn.execute("update commit_counter set n = n + 1 where aggregate = 'a' "
                           "returning n").fetchone()
        assert row is not None
        conn.execute("update outbox set payload = jsonb_build_object('n', %s::int) "
                     "where payload->>'n' = '-1'", (row[0],))
        conn.commit()

    def second() -> None:
        with psycopg.connect(url) as conn:
            t1_inserted.wait(5)
            insert(conn)
            bump_and_commit(conn)
        t2_done.set()

    with psycopg.connect(url) as t1:
        insert(t1)
        t1_inserted.set()
        t = threading.Thread(target=second)
        t.start()
        t2_done.wait(1.0)  # with the lock, T2 is still waiting for T1 here
        bump_and_commit(t1)
        t.join(10)
    return _commit_order_per_aggregate(url)


def test_without_the_lock_seq_order_is_not_commit_order(database_url: str) -> None:
    """The trap is real: T1 drew the lower seq but committed after T2."""
    assert _choreography(database_url, use_publish=False)["a"] == [2, 1]


def test_with_publish_the_second_writer_waits_and_order_holds(database_url: str) -> None:
    assert _choreography(database_url, use_publish=True)["a"] == [1, 2]
