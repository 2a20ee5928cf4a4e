"""run_cdc_checks on the real PostgreSQL: each problem names its fix."""

from __future__ import annotations

import uuid

import psycopg

from connect.checks import run_cdc_checks, slot_lag_bytes
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
