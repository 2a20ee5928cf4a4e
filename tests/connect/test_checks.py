"""run_cdc_checks on the real PostgreSQL: each problem names its fix."""

from __future__ import annotations

import uuid

import psycopg
from click.testing import CliRunner

from connect.checks import cdc_notes, run_cdc_checks, slot_lag_bytes
from outbox.cli import main
from outbox.settings import Settings


def test_ready_database_then_missing_idle_slot_and_uncovered_publication(
        database_url: str) -> None:
    settings = Settings(database_url=database_url)
    # The stack's role is a superuser with wal_level=logical: nothing to fix (other agents'
    # connectors may hold every slot at this moment; that one is not this database's fault).
    assert [p for p in run_cdc_checks(settings) if "slots are in use" not in p] == []

    slot = "chk_" + uuid.uuid4().hex[:8]
    publication = "pub_" + uuid.uuid4().hex[:8]
    problems = run_cdc_checks(settings, slot, publication)
    assert any(f"replication slot {slot!r} does not exist yet" in p for p in problems)
    assert any(f"publication {publication!r} does not cover public.outbox" in p
               and "CREATE PUBLICATION" in p for p in problems)

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        conn.execute(f'create publication "{publication}" for table public.outbox')
    try:
        problems = run_cdc_checks(settings, slot, publication)
        assert len(problems) == 1, problems
        assert "nothing is streaming from it, so it pins WAL" in problems[0]
        assert f"pg_drop_replication_slot('{slot}')" in problems[0]
        lag = slot_lag_bytes(settings, slot)
        assert lag is not None and lag >= 0
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(%s)", (slot,))
    assert slot_lag_bytes(settings, slot) is None


def _with_option(url: str, option: str) -> str:
    return url + ("&" if "?" in url else "?") + "options=-c%20" + option.replace("=", "%3D")


def test_a_note_when_commits_leave_their_wal_flush_to_the_wal_writer(
        database_url: str) -> None:
    """synchronous_commit=off delays what Debezium sees by up to wal_writer_delay: said, not
    failed (bench/cdc.py: p50 ~200 ms more)."""
    lazy = _with_option(database_url, "synchronous_commit=off")
    (note,) = cdc_notes(Settings(database_url=lazy))
    assert "synchronous_commit is 'off'" in note
    assert "wal_writer_delay = 200ms" in note
    assert "SET synchronous_commit = on" in note
    assert cdc_notes(Settings(database_url=_with_option(database_url,
                                                        "synchronous_commit=on"))) == []

    result = CliRunner().invoke(main, ["db", "check", "--cdc", "--database-url", lazy])
    assert "note: synchronous_commit is 'off'" in result.output
    # A note does not fail the check (other agents' connectors may hold every slot).
    assert result.exit_code == 0 or "slots are in use" in result.output, result.output
