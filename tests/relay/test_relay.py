"""The relay against real PostgreSQL and Kafka (in-process relays)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy

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


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as Java computes it."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def java_partition(key: bytes, partitions: int) -> int:
    """Java's DefaultPartitioner / BuiltInPartitioner for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_known_java_vectors() -> None:
    # Vectors from Kafka's UtilsTest.testMurmur2 (Java signed ints, here unsigned).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


def test_every_row_reaches_kafka_with_pinned_record_and_java_partition(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=6)
    events = make_events(300, aggregates=25)
    events[0].update(correlation_id="corr-1", causation_id="cause-1", traceparent="00-tp-01")
    events[1].update(payload={"zeta": 1, "a": "ü€", "nested": {"b": [1, None]}})
    # A SQL null payload: publish() refuses it, another writer could store it.
    events[2].update(payload=sqlalchemy.null())
    rows = (insert_events(outbox_url, events[:2]) + insert_events(outbox_url, events[2:3], raw=True)
            + insert_events(outbox_url, events[3:]))
    relay = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix), batch_size=64)

    records = consume_topic(kafka_bootstrap, topic, len(rows))
    assert relay.stop() == 0
    assert pending(outbox_url) == 0
    assert check_kafka_order(records, expected_order(outbox_url)) == 0
    with psycopg.connect(outbox_url) as conn:
        db = {str(r[0]): r for r in conn.execute(
            "select id, payload, created_at from outbox")}
    by_id = {(r.header("id") or b"").decode(): r for r in records}
    for event in rows:
        record = by_id[str(event["id"])]
        payload, created_at = db[str(event["id"])][1], db[str(event["id"])][2]
        assert record.key == event["aggregateid"].encode()
        assert record.partition == java_partition(record.key or b"", 6)
        expected_value = (None if payload is None else json.dumps(
            payload, separators=(",", ":"), ensure_ascii=False).encode())
        assert record.value == expected_value
        assert record.timestamp_ms == (created_at - datetime(1970, 1, 1)) // timedelta(
            milliseconds=1)
        names = [k for k, _ in record.headers]
        if event.get("correlation_id"):
            assert names == ["id", "eventType", "correlationId", "causationId", "traceparent"]
            assert record.header("traceparent") == b"00-tp-01"
        else:
            assert names == ["id", "eventType"]
        assert record.header("eventType") == b"Step"
    assert by_id[str(rows[1]["id"])].value == '{"a":"ü€","zeta":1,"nested":{"b":[1,null]}}'.encode()


def test_rows_committed_while_running_are_published_and_notify_wakes(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    from click.testing import CliRunner

    from relay.cli import relay as relay_group

    result = CliRunner().invoke(relay_group, ["install-notify", "--database-url", outbox_url])
    assert result.exit_code == 0, result.output
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic)
    handle = start_relay(settings, poll_interval=30.0)  # only NOTIFY can wake it quickly
    time.sleep(1.5)
    started = time.monotonic()
    insert_events(outbox_url, make_events(5, aggregates=5))
    while pending(outbox_url) and time.monotonic() - started < 10:
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert pending(outbox_url) == 0
    assert elapsed < 5, f"NOTIFY did not wake the relay ({elapsed:.1f}s)"
    assert handle.stop() == 0
    records = consume_topic(kafka_bootstrap, topic, 5)
    assert check_kafka_order(records, expected_order(outbox_url)) == 0


def test_two_instances_divide_shards_and_keep_order(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic)
    first = start_relay(settings, batch_size=50)
    second = start_relay(settings, batch_size=50)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        owned = (len(first.relay.shards.owned), len(second.relay.shards.owned))
        if owned == (128, 128):
            break
        time.sleep(0.2)
    assert owned == (128, 128)
    assert not first.relay.shards.owned & second.relay.shards.owned
    for start in range(0, 1000, 100):
        insert_events(outbox_url, make_events(100, aggregates=40, start=start))
    deadline = time.monotonic() + 30
    while pending(outbox_url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pending(outbox_url) == 0
    assert first.relay.published_total > 0 and second.relay.published_total > 0
    # One stops: the other takes all shards over.
    assert first.stop() == 0
    deadline = time.monotonic() + 10
    while len(second.relay.shards.owned) < 256 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(second.relay.shards.owned) == 256
    insert_events(outbox_url, make_events(100, aggregates=40, start=2000))
    records = consume_topic(kafka_bootstrap, topic, 1100)
    assert second.stop() == 0
    assert check_kafka_order(records, expected_order(outbox_url)) == 0


def test_status_purge_and_cli(outbox_url: str, kafka_bootstrap: str, prefix: str,
                              start_relay: Any) -> None:
    from click.testing import CliRunner

    from relay.cli import purge, status

    insert_events(outbox_url, make_events(20, aggregates=4))
    runner = CliRunner()
    out = runner.invoke(status, ["--database-url", outbox_url, "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["backlog"] == 20 and info["failed"] == 0 and info["shards_owned"] == 0
    handle = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix))
    deadline = time.monotonic() + 20
    while pending(outbox_url) and time.monotonic() < deadline:
        time.sleep(0.1)
    out = runner.invoke(status, ["--database-url", outbox_url])
    assert out.exit_code == 0, out.output
    assert "backlog:          0 pending rows" in out.output
    assert "shards owned:     256 of 256" in out.output and "0-255" in out.output
    assert handle.stop() == 0
    out = runner.invoke(purge, ["--database-url", outbox_url, "--older-than", "1h"])
    assert out.exit_code == 0 and "purged 0 " in out.output, out.output
    with psycopg.connect(outbox_url) as conn:
        seqs = [r[0] for r in conn.execute("select seq from outbox order by seq")]
        old, pending_old = seqs[:12], seqs[2]
        conn.execute("update outbox set created_at = created_at - interval '2 hours' "
                     "where seq = any(%s)", (old,))
        # An old row not delivered (taken off the fast path by a failure, say) is walked
        # over, never deleted.
        conn.execute("update outbox set last_error = 'test' where seq = %s", (pending_old,))
    out = runner.invoke(purge, ["--database-url", outbox_url, "--older-than", "1h",
                                "--batch-size", "3"])
    assert out.exit_code == 0 and "purged 11 " in out.output, out.output
    with psycopg.connect(outbox_url) as conn:
        left = [r[0] for r in conn.execute("select seq from outbox order by seq")]
    assert left == [pending_old, *seqs[12:]]
    out = runner.invoke(purge, ["--database-url", outbox_url, "--older-than", "soon"])
    assert out.exit_code != 0 and "'soon' is not a duration" in out.output


def test_cdc_purge_deletes_old_captured_rows_and_refuses_when_unsafe(outbox_url: str) -> None:
    """With Debezium nothing marks rows: `outbox purge --cdc` deletes by age, but only when
    a logical slot exists and no relay of the table is connected."""
    from click.testing import CliRunner

    from outbox.settings import Settings
    from relay.cli import purge
    from relay.queries import Queries

    insert_events(outbox_url, make_events(10, aggregates=2))
    with psycopg.connect(outbox_url, autocommit=True) as conn:
        seqs = [r[0] for r in conn.execute("select seq from outbox order by seq")]
        conn.execute("update outbox set created_at = created_at - interval '2 hours' "
                     "where seq = any(%s)", (seqs[:6],))
    runner = CliRunner()
    args = ["--database-url", outbox_url, "--older-than", "1h", "--cdc"]
    out = runner.invoke(purge, args)
    assert out.exit_code != 0 and "no logical replication slot" in out.output, out.output
    slot = f"purge_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(outbox_url, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    try:
        relay_name = Queries.for_settings(Settings(database_url=outbox_url)).application_name
        with psycopg.connect(outbox_url, application_name=f"{relay_name}:test"):
            out = runner.invoke(purge, args)
        assert out.exit_code != 0 and "relay(s) of public.outbox are connected" in out.output
        out = runner.invoke(purge, args)
        assert out.exit_code == 0 and "purged 6 captured rows" in out.output, out.output
    finally:
        with psycopg.connect(outbox_url, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    with psycopg.connect(outbox_url) as conn:
        left = [r[0] for r in conn.execute("select seq from outbox order by seq")]
    assert left == seqs[6:]


def test_retention_inside_the_daemon_purges_published_rows(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any) -> None:
    insert_events(outbox_url, make_events(50, aggregates=5))
    handle = start_relay(relay_settings(outbox_url, kafka_bootstrap, prefix),
                         retention_seconds=0.5, purge_interval=0.2, purge_batch=7)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(outbox_url) as conn:
            row = conn.execute("select count(*) from outbox").fetchone()
        if row is not None and row[0] == 0:
            break
        time.sleep(0.2)
    assert row is not None and row[0] == 0, "published rows were not purged"
    assert handle.stop() == 0


def test_run_without_database_url_exits_with_the_configuration_code(tmp_path: Any) -> None:
    import os
    import subprocess

    from tests.relay.conftest import OUTBOX_BIN

    env = {k: v for k, v in os.environ.items() if k != "OUTBOX_DATABASE_URL"}
    result = subprocess.run([str(OUTBOX_BIN), "relay", "run"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 3
    assert "OUTBOX_DATABASE_URL" in result.stderr and '"action": "config_error"' in result.stderr


def test_rejected_kafka_configuration_exits_with_the_configuration_code(
        outbox_url: str, tmp_path: Any) -> None:
    import os
    import subprocess

    from tests.relay.conftest import OUTBOX_BIN

    env = {**os.environ, "OUTBOX_DATABASE_URL": outbox_url}
    result = subprocess.run([str(OUTBOX_BIN), "relay", "run", "--no-listen", "--kafka-config",
                             "no.such.property=1"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "no.such.property" in result.stderr


def test_a_database_behind_the_relay_schema_exits_with_the_configuration_code(
        outbox_url: str, kafka_bootstrap: str, prefix: str, caplog: Any) -> None:
    """Schema version 2 (no relay cursor table): a clear error, not a crash loop."""
    from outbox import migrate
    from outbox.exit_codes import EXIT_CONFIG
    from outbox.settings import Settings
    from relay.loop import Relay, RelayOptions

    migrate.downgrade(Settings(database_url=outbox_url), "0002")
    relay = Relay(relay_settings(outbox_url, kafka_bootstrap, prefix),
                  RelayOptions(listen=False))
    assert relay.run() == EXIT_CONFIG
    assert "outbox_relay_cursor does not exist" in caplog.text
    assert "run `outbox db upgrade`" in caplog.text
    relay = Relay(relay_settings(outbox_url, kafka_bootstrap, prefix, outbox_table="nowhere"),
                  RelayOptions(listen=False))
    assert relay.run() == EXIT_CONFIG
    assert "public.nowhere does not exist" in caplog.text


def test_status_on_a_database_without_the_tables_says_what_to_run(outbox_url: str) -> None:
    from click.testing import CliRunner

    from relay.cli import status

    out = CliRunner().invoke(status, ["--database-url", outbox_url, "--outbox-table", "nope"])
    assert out.exit_code != 0
    assert "public.nope does not exist: run `outbox db upgrade`" in out.output
