"""Snapshot windows (relay.window): the progress rules, and late commits on real PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from outbox.publish import Event, publish
from relay.cli import collect_status
from relay.queries import Queries, prefer_index_scans
from relay.window import (
    MAX_SEQ,
    NOTHING,
    PROBED_XIDS,
    RANGE_XIDS,
    ShardCursor,
    Window,
    in_stream_order,
    last_seqs,
    progress,
    read_params,
    scan_bounds,
)
from tests.harness.kafka import create_topic
from tests.relay.conftest import (
    DELIVERED,
    check_kafka_order,
    consume_topic,
    expected_order,
    insert_events,
    pending,
    relay_settings,
)


def test_progress_inside_a_window_records_each_shards_last_seq_in_the_batch() -> None:
    cursors = {1: ShardCursor(), 2: ShardCursor("5:9:7"), 3: ShardCursor()}
    window = Window(wins={1: "9:12:", 2: "9:12:", 3: "9:12:"}, touched={1, 2})
    changed = progress(cursors, window, {1: 14, 2: 9}, complete=False)
    assert changed == {1: ShardCursor(NOTHING, "9:12:", 14), 2: ShardCursor("5:9:7", "9:12:", 9)}


def test_a_complete_window_becomes_done_for_every_shard_it_touched() -> None:
    cursors = {1: ShardCursor(), 2: ShardCursor("5:9:7", "8:9:", 3), 3: ShardCursor()}
    # shard 2 came with a window of its own (a previous owner's), shard 3 had no rows
    window = Window(wins={1: "9:12:", 2: "8:9:", 3: "9:12:"}, touched={1, 2})
    changed = progress(cursors, window, {1: 20}, complete=True)
    assert changed == {1: ShardCursor("9:12:"), 2: ShardCursor("8:9:")}


def test_nothing_settled_changes_nothing() -> None:
    window = Window(wins={1: "9:12:"}, touched={1})
    assert progress({1: ShardCursor()}, window, {}, complete=False) == {}


def _row(shard: int, seq: int) -> tuple[Any, ...]:
    return ("id", "order", "a", "T", "{}", 0, None, None, None, None, seq, shard, 0)


def test_the_last_seq_of_each_shard_is_its_last_row_in_stream_order() -> None:
    rows = [_row(1, 5), _row(1, 9), _row(3, 2), _row(3, 7), _row(4, 1)]
    assert last_seqs(rows) == {1: 9, 3: 7, 4: 1}
    assert last_seqs([]) == {}


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 50)), unique=True),
       st.none() | st.tuples(st.integers(0, 5), st.integers(0, 50)))
def test_stream_order_is_rising_shard_then_seq_after_the_last_position(
        positions: list[tuple[int, int]], after: tuple[int, int] | None) -> None:
    rows = [_row(shard, seq) for shard, seq in positions]
    expected = positions == sorted(positions) and (
        after is None or not positions or positions[0] > after)
    assert in_stream_order(rows, after) == expected


def test_reading_on_after_a_position_skips_the_shards_read_and_the_rows_handed_out() -> None:
    cursors = {s: ShardCursor(upto=4) for s in (7, 2, 5)}
    params = read_params([7, 2, 5], cursors, None, after=(5, 10))
    assert params["shards"] == "2,5,7"  # ascending: the stream order
    assert params["upto"] == f"{MAX_SEQ},10,4"  # 2 read whole, 5 up to seq 10, 7 not yet
    assert read_params([7, 2, 5], cursors, None)["upto"] == "4,4,4"


def test_each_shard_is_given_its_probes() -> None:
    cursors = {1: ShardCursor("10:500:11,12,13,14"), 2: ShardCursor()}
    params = read_params([2, 1], cursors, None)
    assert params["probes"] == "11 12;"  # PROBED_XIDS of shard 1's in-progress ids


def same_shard_ids(url: str, count: int) -> list[str]:
    """Aggregate ids that hash to one shard (so only visibility, not the shard, tells
    their rows apart)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select id from (select 'late-' || n as id from generate_series(1, 5000) n) c "
            "where abs(hashtextextended(id, 0) %% 256) = "
            "abs(hashtextextended('late-1', 0) %% 256) limit %s", (count,)).fetchall()
    return [str(r[0]) for r in rows]


def test_a_row_that_commits_late_with_a_low_seq_is_still_delivered(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    """The trap a high-water mark on seq falls into: T1 draws the lower seq, T2 commits and
    is delivered first, then T1 commits. The window after T2's holds T1's row."""
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=1)  # one partition: send order is visible
    slow_id, fast_id = same_shard_ids(outbox_url, 2)
    handle = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix))
    with psycopg.connect(outbox_url) as slow:
        publish(slow, Event(aggregate_type="order", aggregate_id=slow_id, event_type="Slow",
                            payload={"n": 1}))
        insert_events(outbox_url, [{"aggregatetype": "order", "aggregateid": fast_id,
                                    "payload": {"n": 2}}])
        deadline = time.monotonic() + 20
        while pending(outbox_url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pending(outbox_url) == 0  # T2's row; T1's is not visible yet
        # `outbox status` points at the open writing transaction (it holds windows back).
        info = collect_status(relay_settings(outbox_url, kafka_bootstrap, prefix))
        assert info["oldest_writing_transaction_seconds"] > 0.05 and info["retrying"] == 0
        with psycopg.connect(outbox_url) as conn:
            seqs: dict[str, int] = dict(conn.execute(
                "select aggregateid, seq from outbox").fetchall())
        slow.commit()
    assert seqs == {fast_id: seqs[fast_id]}
    deadline = time.monotonic() + 20
    while pending(outbox_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending(outbox_url) == 0
    with psycopg.connect(outbox_url) as conn:
        order = [r[0] for r in conn.execute("select aggregateid from outbox order by seq")]
        cursor = conn.execute("select done, win from outbox_relay_cursor "
                              "where shard = abs(hashtextextended(%s, 0) %% 256)",
                              (slow_id,)).fetchone()
    assert order == [slow_id, fast_id]  # the late row has the lower seq
    assert cursor is not None and cursor[1] is None  # its window is complete
    records = consume_topic(kafka_bootstrap, topic, 2)
    assert [r.key for r in records] == [fast_id.encode(), slow_id.encode()]
    assert check_kafka_order(records, expected_order(outbox_url)) == 0
    assert handle.stop() == 0


def test_a_large_backlog_is_read_by_cursor_and_new_rows_join_later_windows(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    """Windows larger than a batch (read through the WindowReader's server-side cursor)
    while writers keep committing: every row once, in order, the cursors caught up."""
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=3)
    events = [{"aggregatetype": "order", "aggregateid": f"agg-{i % 40}", "payload": {"n": i}}
              for i in range(3000)]
    insert_events(outbox_url, events[:2000])
    handle = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix), batch_size=150)
    for start in range(2000, 3000, 100):
        insert_events(outbox_url, events[start:start + 100])
        time.sleep(0.02)
    records = consume_topic(kafka_bootstrap, topic, 3000)
    assert handle.stop() == 0
    assert len(records) == 3000
    assert check_kafka_order(records, expected_order(outbox_url)) == 0
    with psycopg.connect(outbox_url) as conn:
        left = conn.execute(f"select count(*) from outbox o where not {DELIVERED}").fetchone()
        open_windows = conn.execute(
            "select count(*) from outbox_relay_cursor where win is not null").fetchone()
    assert left == (0,) and open_windows == (0,)


def test_a_half_delivered_window_left_by_a_dead_owner_is_finished_exactly(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    """The cursors as a crashed relay leaves them mid-window (``win`` set, ``upto`` at the
    last recorded seq): the next owner sends the rest of that window, then what committed
    after it, and nothing the cursors say was delivered."""
    from relay.queries import Queries

    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=2)
    events = [{"aggregatetype": "order", "aggregateid": f"agg-{i % 7}", "payload": {"n": i}}
              for i in range(300)]
    insert_events(outbox_url, events[:100])
    insert_events(outbox_url, events[100:200])
    queries = Queries("public", "outbox")
    with psycopg.connect(outbox_url, autocommit=True) as conn:
        window = conn.execute(queries.snapshot).fetchone()
        seqs = [r[0] for r in conn.execute("select seq from outbox order by seq")]
        assert window is not None
        shards = list(range(256))
        conn.execute(queries.save_cursors, {
            "shards": shards, "done": [NOTHING] * 256, "win": [window[0]] * 256,
            "upto": [seqs[49]] * 256})
    insert_events(outbox_url, events[200:])  # committed after the window
    with psycopg.connect(outbox_url) as conn:
        ids = [str(r[0]) for r in conn.execute("select id from outbox order by seq")]
    handle = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix), batch_size=40)
    records = consume_topic(kafka_bootstrap, topic, 250)
    assert handle.stop() == 0
    sent = [(r.header("id") or b"").decode() for r in records]
    assert sorted(sent) == sorted(ids[50:])  # the first 50 were recorded as delivered
    expected = {key: [i for i in want if i in set(ids[50:])]
                for key, want in expected_order(outbox_url).items()}
    assert check_kafka_order(records, expected) == 0
    with psycopg.connect(outbox_url) as conn:
        assert conn.execute("select count(*) from outbox_relay_cursor "
                            "where win is not null").fetchone() == (0,)
    assert pending(outbox_url) == 0


def _outbox_rows_read(plan: dict[str, Any]) -> int:
    """Rows the outbox scans of an EXPLAIN ANALYZE (JSON) plan returned or filtered out."""
    own = 0
    if plan.get("Relation Name") == "outbox":
        loops = plan.get("Actual Loops", 1)
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * loops
    return own + sum(_outbox_rows_read(child) for child in plan.get("Plans", []))


def test_a_writer_left_open_does_not_make_windows_reread_delivered_rows(
        outbox_url: str) -> None:
    """``done`` taken while a writing transaction is open has that transaction among its
    in-progress ids. The window query looks it up instead of scanning from it: of 600
    rows committed (and delivered) in 300 transactions after it began, it reads at most
    those of the last RANGE_XIDS transactions, however long the writer stays open. Once it
    commits, its row is the next window."""
    queries = Queries("public", "outbox")
    shards = list(range(256))
    with psycopg.connect(outbox_url) as long_writer:
        publish(long_writer, Event("order", "long-1", "Slow", {"n": 0}))  # takes a txid
        for t in range(300):
            insert_events(outbox_url, [{"aggregatetype": "order", "aggregateid": f"a-{t}-{i}",
                                        "payload": {"n": i}} for i in range(2)])
        with psycopg.connect(outbox_url, autocommit=True) as conn:
            prefer_index_scans(conn)
            row = conn.execute("select pg_current_snapshot()::text").fetchone()
            assert row is not None
            done = str(row[0])
            _lo, probes = scan_bounds(done)
            writer = int(done.split(":", maxsplit=1)[0])
            assert probes == [writer]  # the writer left open is looked up
            params = {**read_params(shards, {s: ShardCursor(done) for s in shards}, None),
                      "limit": 100}
            explained = conn.execute("explain (analyze, format json) "
                                     + queries.first_window_batch, params).fetchone()
            assert explained is not None
            assert _outbox_rows_read(explained[0][0]["Plan"]) <= 2 * RANGE_XIDS  # not 600
            long_writer.commit()
            window = conn.execute(queries.first_window_batch, params).fetchall()
    assert [(r[2], r[3]) for r in window] == [("long-1", "Slow")]


@st.composite
def snapshots(draw: st.DrawFn) -> str:
    xmin = draw(st.integers(3, 10**6))
    xmax = xmin + draw(st.integers(0, 3000))
    xip = sorted(draw(st.sets(st.integers(xmin, max(xmin, xmax - 1)), max_size=40))
                 if xmax > xmin else set())
    return f"{xmin}:{xmax}:{','.join(map(str, xip))}"


@given(snapshots())
def test_scan_bounds_cover_exactly_what_the_snapshot_does_not_see(done: str) -> None:
    """Range from lo plus the looked-up ids = every id the snapshot does not see; few
    lookups; the scan never starts below xmin."""
    xmin, xmax = (int(v) for v in done.split(":")[:2])
    xip = {int(x) for x in done.split(":")[2].split(",") if x}
    lo, probes = scan_bounds(done)
    assert xmin <= lo <= xmax
    assert len(probes) <= PROBED_XIDS
    assert set(probes) == {x for x in xip if x < lo}
    for txid in range(xmin, xmax + 2):
        not_visible = txid >= xmax or txid in xip
        assert not_visible == (txid in probes or (txid >= lo and not_visible))


def test_scan_bounds_look_up_a_writer_left_open_and_scan_from_recent_ones() -> None:
    assert scan_bounds(NOTHING) == (1, [])
    assert scan_bounds("500:520:505,510") == (500, [])  # all recent: scan from xmin
    # one transaction far behind, two recent ones: look up the old one only, scan the last
    # RANGE_XIDS transactions
    assert scan_bounds("100:5000:100,4990,4995") == (5000 - RANGE_XIDS, [100])
    # many far behind: the PROBED_XIDS oldest are looked up, the scan starts at the next
    lo, probes = scan_bounds("100:5000:100,200,300,400")
    assert probes == [100, 200][:PROBED_XIDS] and lo == [100, 200, 300][PROBED_XIDS]
