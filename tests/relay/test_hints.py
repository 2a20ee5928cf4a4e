"""NOTIFY names the shards with new rows (relay.hints); the relay reads only those.

The parsing and the accumulator are pure (property-tested); the trigger's payloads are
checked against the real PostgreSQL, and a relay that polls only every 30 s must still
deliver a continuous stream at once, with either trigger version, and keep order.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from relay.cli import relay as relay_group
from relay.delivery import Batch
from relay.hints import Hints, parse
from relay.loop import Relay
from relay.queries import Queries
from tests.harness.kafka import create_topic
from tests.relay.conftest import (
    check_kafka_order,
    consume_topic,
    expected_order,
    insert_events,
    make_events,
    pending,
    relay_settings,
)

QUERIES = Queries("public", "outbox")


def test_parse_reads_shard_lists_and_refuses_anything_else() -> None:
    assert parse("7") == frozenset({7})
    assert parse("0,255, 3") == frozenset({0, 3, 255})
    for unknown in ("", "x", "256", "-1", "1,,2", "1.5", "\u0661"):
        assert parse(unknown) is None, unknown


@given(st.lists(st.one_of(st.frozensets(st.integers(0, 255), min_size=1),
                          st.sampled_from(["", "junk", "300"]))))
def test_take_returns_the_union_since_the_last_take(payloads: list[Any]) -> None:
    hints = Hints()
    texts = [p if isinstance(p, str) else ",".join(map(str, p)) for p in payloads]
    for text in texts:
        hints.add(text)
    taken = hints.take()
    if any(isinstance(p, str) for p in payloads):
        assert taken is None  # a payload that names no shard: any shard
    else:
        assert taken == frozenset().union(*payloads) if payloads else taken == frozenset()
    assert hints.take() == frozenset()  # forgotten once taken


def install_notify(url: str) -> None:
    result = CliRunner().invoke(relay_group, ["install-notify", "--database-url", url])
    assert result.exit_code == 0, result.output


def test_the_trigger_sends_each_shard_of_a_transaction_once(outbox_url: str) -> None:
    install_notify(outbox_url)
    with psycopg.connect(outbox_url, autocommit=True) as listener:
        listener.execute(QUERIES.listen)
        insert_events(outbox_url, make_events(40, aggregates=20))  # one transaction
        payloads = [n.payload for n in listener.notifies(timeout=2.0)]
        with psycopg.connect(outbox_url) as conn:
            shards = {r[0] for r in conn.execute("select distinct shard from outbox")}
    assert sorted(payloads) == sorted(str(s) for s in shards)  # each once, none missing
    with psycopg.connect(outbox_url, autocommit=True) as conn:
        assert QUERIES.notify_installed(conn) is True
        conn.execute(QUERIES.drop_notify_trigger)
        assert QUERIES.notify_installed(conn) is None


def write_steadily(url: str, batches: int, per_batch: int, aggregates: int) -> None:
    for n in range(batches):
        insert_events(url, make_events(per_batch, aggregates, start=n * per_batch))
        time.sleep(0.01)


def deliver_stream(outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any,
                   relays: int) -> float:
    """A stream of small transactions while the relays run: seconds from the last commit
    until every row is delivered (the relays poll only every 30 s)."""
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic)
    handles = [start_relay(settings, poll_interval=30.0, batch_size=20)
               for _ in range(relays)]
    time.sleep(2.0)  # shards divided, LISTEN running, the start-up read done
    writer = threading.Thread(target=write_steadily, args=(outbox_url, 60, 5, 37))
    writer.start()
    writer.join()
    done = time.monotonic()
    while pending(outbox_url) and time.monotonic() - done < 20:
        time.sleep(0.02)
    elapsed = time.monotonic() - done
    assert pending(outbox_url) == 0
    for handle in handles:
        assert handle.stop() == 0
    records = consume_topic(kafka_bootstrap, topic, 300)
    assert check_kafka_order(records, expected_order(outbox_url)) == 0
    return elapsed


def test_a_stream_is_delivered_by_hints_alone_across_two_relays(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    install_notify(outbox_url)
    elapsed = deliver_stream(outbox_url, kafka_bootstrap, prefix, start_relay, relays=2)
    assert elapsed < 5, f"rows waited for the 30 s poll ({elapsed:.1f}s)"


# The trigger of the versions before hints: one '' per inserting statement.
EARLIER_TRIGGER = (QUERIES.notify_trigger.replace("coalesce(new.shard::text, '')", "''")
                   .replace("for each row", "for each statement"))


def test_an_earlier_trigger_without_shards_still_wakes_every_shard(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    with psycopg.connect(outbox_url, autocommit=True) as conn:
        conn.execute(EARLIER_TRIGGER)
        assert QUERIES.notify_installed(conn) is False  # installed, names no shards
    relays: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        relays.append(start_relay(*args, **kwargs))
        return relays[-1]

    elapsed = deliver_stream(outbox_url, kafka_bootstrap, prefix, start, relays=1)
    assert elapsed < 5, f"rows waited for the 30 s poll ({elapsed:.1f}s)"
    assert relays[0].relay.notified and relays[0].relay.old_trigger_noted  # said so, once


def test_without_the_trigger_a_relay_does_not_count_on_notify(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    """No trigger: a delivered window is followed by another read at once, as before hints
    (rows committed meanwhile would otherwise wait for the poll)."""
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    create_topic(kafka_bootstrap, f"{prefix}-order")
    handle = start_relay(settings, poll_interval=30.0)
    time.sleep(1.5)
    assert handle.relay.notified is False
    install_notify(outbox_url)
    deadline = time.monotonic() + 10  # seen at the next rebalance (0.5 s here)
    while not handle.relay.notified and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.relay.notified is True
    assert handle.stop() == 0


@pytest.mark.parametrize(("notified", "completes", "poll_meanwhile", "dirty_after"), [
    (True, True, False, False),   # delivered whole: wait for the next NOTIFY
    (True, True, True, True),     # a poll came while it was in flight: it still reads all
    (True, False, False, True),   # more of the window to read (or rows to read again)
    (False, True, False, True),   # no trigger: rows committed meanwhile are read at once
])
def test_a_settled_group_reads_again_unless_notify_will_tell_it(
        notified: bool, completes: bool, poll_meanwhile: bool, dirty_after: bool) -> None:
    """The loop's rule after a batch settles (pure: no connection, settling stubbed)."""
    relay = Relay(relay_settings("postgresql://unused/db", "unused:9092", "rt"))
    relay.notified = notified
    relay._settle = lambda batch: None  # type: ignore[method-assign]
    group = relay.groups[0]
    group.in_flight = Batch(group=0, rows=[], ends_window=True, completes_window=completes)
    group.dirty = poll_meanwhile
    relay._settle_completed()
    assert group.in_flight is None
    assert group.dirty is dirty_after
