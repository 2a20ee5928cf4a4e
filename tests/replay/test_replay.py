"""`outbox replay` re-publishes chosen outbox rows with their original ids (real PG + Kafka)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import MetaData, create_engine, insert

from outbox.cli import main
from outbox.record import OutboxRow, to_record
from outbox.tables import outbox_table
from tests.harness.kafka import consume_all, create_topic

# In the past: brokers refuse record timestamps more than an hour ahead of their clock.
BASE = dt.datetime(2026, 1, 2, 12, 0, 0)


def _rows(database_url: str) -> list[OutboxRow]:
    """Write published rows for two aggregates and one pending row; return them in seq order."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    metadata = MetaData()
    table = outbox_table(metadata)
    metadata.create_all(engine, checkfirst=True)
    now = BASE
    rows = []
    with engine.begin() as conn:
        for n in range(6):
            row = OutboxRow(uuid.uuid4(), "order", f"o-{n % 2}", f"Step{n}",
                            {"n": n, "orderId": f"o-{n % 2}"}, now + dt.timedelta(seconds=n),
                            "corr-1", None, None)
            conn.execute(insert(table).values(
                **row._asdict(), published_at=None if n == 5 else now))
            rows.append(row)
    engine.dispose()
    return rows


def _invoke(database_url: str, kafka: str, template: str, *args: str,
            stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["replay", *args], input=stdin, env={
        "OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka,
        "OUTBOX_TOPIC_TEMPLATE": template})
    return result.exit_code, result.output


def test_replay_of_an_aggregate_sends_its_published_rows_in_order_with_original_ids(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    rows = _rows(database_url)
    template = topic + "-{aggregatetype}"
    create_topic(kafka_bootstrap, f"{topic}-order", partitions=3)
    code, out = _invoke(database_url, kafka_bootstrap, template, "--aggregate-id", "o-1")
    assert code == 0, out
    assert "re-published 2 of 2" in out  # o-1 has rows 1, 3 published; 5 is pending
    got = consume_all(kafka_bootstrap, f"{topic}-order", expected=2, idle=1)
    expected = [to_record(r, template) for r in rows
                if r.aggregateid == "o-1" and r.type != "Step5"]
    assert [(g.key, g.value, g.headers, g.timestamp_ms) for g in got] == [
        (e.key, e.value, e.headers, e.timestamp_ms) for e in expected]


def test_replay_by_event_id_and_type_and_time(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    rows = _rows(database_url)
    template = topic + "-{aggregatetype}"
    code, out = _invoke(database_url, kafka_bootstrap, template, "--dry-run",
                        "--event-id", str(rows[0].id), "--event-type", "Step0")
    assert code == 0, out
    assert "1 row(s) would be re-published" in out
    assert str(rows[0].id) in out
    code, out = _invoke(database_url, kafka_bootstrap, template, "--dry-run",
                        "--since", "2026-01-02T12:00:02", "--until", "2026-01-02T12:00:04")
    assert "2 row(s) would be re-published" in out
    code, out = _invoke(database_url, kafka_bootstrap, template, "--dry-run", "--all",
                        "--include-unpublished")
    assert "6 row(s) would be re-published" in out


def test_dry_run_sends_nothing(database_url: str, kafka_bootstrap: str, topic: str) -> None:
    _rows(database_url)
    template = topic + "-{aggregatetype}"
    create_topic(kafka_bootstrap, f"{topic}-order", partitions=1)
    code, out = _invoke(database_url, kafka_bootstrap, template, "--all", "--dry-run")
    assert code == 0, out
    assert "5 row(s) would be re-published" in out
    assert consume_all(kafka_bootstrap, f"{topic}-order", timeout=3) == []


def test_replay_needs_a_filter_or_all(database_url: str, kafka_bootstrap: str) -> None:
    code, out = _invoke(database_url, kafka_bootstrap, "x-{aggregatetype}")
    assert code == 2
    assert "no filter given" in out


@pytest.mark.parametrize("answer", ["n"])
def test_large_replay_asks_first(database_url: str, kafka_bootstrap: str, topic: str,
                                 answer: str) -> None:
    _rows(database_url)
    code, out = _invoke(database_url, kafka_bootstrap, topic + "-{aggregatetype}", "--all",
                        "--confirm-over", "2", stdin=answer + "\n")
    assert code == 2
    assert "re-publish 5 events?" in out
    assert "not confirmed, nothing done" in out


def test_unreachable_database_is_one_clear_line(kafka_bootstrap: str) -> None:
    code, out = _invoke("postgresql://nobody:secret@127.0.0.1:1/none", kafka_bootstrap,
                        "x-{aggregatetype}", "--all")
    assert code == 6  # outbox.exit_codes.EXIT_UNAVAILABLE
    assert "database postgresql://nobody:***@127.0.0.1:1/none did not answer" in out
    assert "secret" not in out
