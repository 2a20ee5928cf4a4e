"""What PostgreSQL must provide for Debezium, checked, with the fix for each problem.

Used by ``outbox db check --cdc`` and ``outbox connect status``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from outbox.settings import Settings, qualified, quote_ident


def run_cdc_checks(settings: Settings, slot: str | None = None,
                   publication: str | None = None) -> list[str]:
    """Problems that would stop Debezium from streaming the outbox; empty means ready."""
    with psycopg.connect(settings.libpq_url(), connect_timeout=5) as conn:
        return _problems(conn, settings, slot, publication)


def cdc_findings(settings: Settings, slot: str | None = None,
                 publication: str | None = None) -> tuple[list[str], list[str]]:
    """:func:`run_cdc_checks` and :func:`cdc_notes` over one connection."""
    with psycopg.connect(settings.libpq_url(), connect_timeout=5) as conn:
        return _problems(conn, settings, slot, publication), _notes(conn)


def _problems(conn: psycopg.Connection[Any], settings: Settings, slot: str | None,
              publication: str | None) -> list[str]:
    problems: list[str] = []
    level = conn.execute("show wal_level").fetchone()
    if level is None or level[0] != "logical":
        problems.append(f"wal_level is {level[0] if level else '?'!r}, Debezium needs "
                        "'logical': ALTER SYSTEM SET wal_level = logical; then restart "
                        "PostgreSQL")
    role = conn.execute("select rolname, rolsuper, rolreplication from pg_roles "
                        "where rolname = current_user").fetchone()
    if role is not None and not (role[1] or role[2]):
        problems.append(f"role {role[0]!r} lacks the REPLICATION attribute: "
                        f"ALTER ROLE {quote_ident(role[0])} WITH REPLICATION;")
    for setting, minimum in (("max_replication_slots", 1), ("max_wal_senders", 1)):
        row = conn.execute(f"show {setting}").fetchone()
        if row is None or int(row[0]) < minimum:
            problems.append(f"{setting} is {row[0] if row else '?'}; set it to at least "
                            f"{minimum} (one per connector) and restart PostgreSQL")
    used = conn.execute("select count(*) from pg_replication_slots").fetchone()
    limit = conn.execute("show max_replication_slots").fetchone()
    if used and limit and slot is None and int(used[0]) >= int(limit[0]):
        problems.append(f"all {limit[0]} replication slots are in use: drop a stale one "
                        "(see docs/cdc.md) or raise max_replication_slots")
    exists = conn.execute("select 1 from information_schema.tables where table_schema = "
                          "%s and table_name = %s",
                          (settings.db_schema, settings.outbox_table)).fetchone()
    if exists is None:
        problems.append(f"table {settings.db_schema}.{settings.outbox_table} does not "
                        "exist: run `outbox db upgrade`")
    else:
        # The rendered connector places these columns as headers: tracestate (schema
        # version 6) always, ce_* (version 5) in CloudEvents binary mode.
        found = {r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = %s "
            "and table_name = %s and column_name in ('ce_time', 'ce_specversion', "
            "'tracestate')", (settings.db_schema, settings.outbox_table))}
        if "tracestate" not in found:
            problems.append(f"the connector places the column tracestate of "
                            f"{settings.db_schema}.{settings.outbox_table} as a header "
                            "(schema version 6): run `outbox db upgrade`")
        if settings.cloudevents == "binary" and not {"ce_time", "ce_specversion"} <= found:
            problems.append(f"OUTBOX_CLOUDEVENTS=binary needs the columns ce_time and "
                            f"ce_specversion of {settings.db_schema}.{settings.outbox_table} "
                            "(schema version 5): run `outbox db upgrade`")
    if slot is not None:
        row = conn.execute("select active from pg_replication_slots where slot_name = %s",
                           (slot,)).fetchone()
        if row is None:
            problems.append(f"replication slot {slot!r} does not exist yet: "
                            "`outbox connect apply` creates it when the connector starts")
        elif not row[0]:
            # An idle slot still holds back WAL recycling: the disk fills silently.
            problems.append(f"replication slot {slot!r} exists but nothing is streaming "
                            "from it, so it pins WAL: `outbox connect resume` / "
                            "`outbox connect restart`, or drop it if the connector is "
                            f"gone: SELECT pg_drop_replication_slot('{slot}');")
    if publication is not None:
        row = conn.execute("select 1 from pg_publication_tables where pubname = %s and "
                           "schemaname = %s and tablename = %s",
                           (publication, settings.db_schema,
                            settings.outbox_table)).fetchone()
        if row is None:
            problems.append(f"publication {publication!r} does not cover "
                            f"{settings.db_schema}.{settings.outbox_table}: the connector "
                            "creates it (publication.autocreate.mode=filtered), or: "
                            f"CREATE PUBLICATION {quote_ident(publication)} FOR TABLE "
                            f"{qualified(settings.db_schema, settings.outbox_table)};")
    return problems


def cdc_notes(settings: Settings) -> list[str]:
    """Settings that do not stop Debezium but slow it down, each with its fix; advisory."""
    with psycopg.connect(settings.libpq_url(), connect_timeout=5) as conn:
        return _notes(conn)


def _notes(conn: psycopg.Connection[Any]) -> list[str]:
    notes: list[str] = []
    row = conn.execute("select current_setting('synchronous_commit'), "
                       "current_setting('wal_writer_delay')").fetchone()
    if row is not None and row[0] in ("off", "local"):
        # Logical decoding only sends WAL that is flushed. A commit that does not wait for
        # its flush leaves it to the WAL writer, so each event can wait wal_writer_delay.
        notes.append(f"synchronous_commit is {row[0]!r} for this role and database: "
                     "Debezium sees a commit only once its WAL is flushed, which then waits "
                     f"for the WAL writer (wal_writer_delay = {row[1]}), adding up to that "
                     "much latency per event. Writers that want low CDC latency: SET "
                     "synchronous_commit = on (per role, session or transaction)")
    return notes


def slot_lag_bytes(settings: Settings, slot: str) -> int | None:
    """How far the slot's confirmed position trails the WAL, in bytes (None: no slot)."""
    with psycopg.connect(settings.libpq_url(), connect_timeout=5) as conn:
        row = conn.execute(
            "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "from pg_replication_slots where slot_name = %s", (slot,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None
