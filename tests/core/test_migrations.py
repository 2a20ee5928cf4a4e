"""The toolkit's Alembic migrations against a real PostgreSQL."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from click.testing import CliRunner

from outbox import migrate
from outbox.cli import main
from outbox.exit_codes import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE
from outbox.settings import Settings


def tables(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = %s",
            (schema,))}


@pytest.fixture
def empty_db(pg_url: str) -> Iterator[str]:
    """A database without the toolkit's tables (the template has them: remove them)."""
    from tests.harness import db

    name = db.clone_database(pg_url, "template0", prefix="mig")
    url = db.with_dbname(pg_url, name)
    yield url
    db.drop_database(pg_url, name)


def test_upgrade_downgrade_upgrade_on_an_empty_database(empty_db: str) -> None:
    settings = Settings(database_url=empty_db)
    assert migrate.current(settings) is None
    migrate.upgrade(settings)
    assert {"outbox", "inbox", "outbox_alembic_version"} <= tables(empty_db)
    assert migrate.current(settings) == migrate.head()
    assert migrate.check(settings) == []
    migrate.downgrade(settings, "base")
    assert tables(empty_db) == {"outbox_alembic_version"}
    migrate.upgrade(settings)
    assert migrate.check(settings) == []


def test_existing_application_tables_and_alembic_version_are_untouched(empty_db: str) -> None:
    with psycopg.connect(empty_db) as conn:
        conn.execute("create table customers (id int primary key, name text)")
        conn.execute("insert into customers values (1, 'Ada')")
        conn.execute("create table alembic_version (version_num varchar(32) primary key)")
        conn.execute("insert into alembic_version values ('app_0042')")
    settings = Settings(database_url=empty_db)
    migrate.upgrade(settings)
    migrate.downgrade(settings, "base")
    migrate.upgrade(settings)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select * from customers").fetchall() == [(1, "Ada")]
        assert conn.execute("select * from alembic_version").fetchall() == [("app_0042",)]
    assert migrate.check(settings) == []


def test_custom_schema_and_table_names(empty_db: str) -> None:
    settings = Settings(database_url=empty_db, db_schema="billing", outbox_table="events_out",
                        inbox_table="events_seen")
    migrate.upgrade(settings)
    assert tables(empty_db, "billing") == {"events_out", "events_seen",
                                           "events_out_relay_cursor", "outbox_alembic_version"}
    assert tables(empty_db) == set()
    assert migrate.check(settings) == []
    # A second schema is independent of the first (the saga runs one per service).
    other = Settings(database_url=empty_db, db_schema="shipping")
    migrate.upgrade(other)
    assert migrate.check(other) == []


def outbox_indexes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {r[0]: r[1] for r in conn.execute(
            "select indexname, indexdef from pg_indexes "
            "where schemaname = 'public' and tablename = 'outbox'")}


def test_version_2_indexes_and_the_step_back_to_version_1(empty_db: str) -> None:
    settings = Settings(database_url=empty_db)
    migrate.upgrade(settings, "0001")
    v1 = outbox_indexes(empty_db)
    assert "ix_outbox_aggregate" in v1 and "btree" in v1["ix_outbox_published_at"]
    migrate.upgrade(settings, "0002")
    v2 = outbox_indexes(empty_db)
    assert "ix_outbox_aggregate" not in v2
    assert "ix_outbox_published_at" not in v2
    assert set(v2) == {"outbox_pkey", "outbox_seq_key", "ix_outbox_pending"}
    migrate.downgrade(settings)  # one step: back to 0001
    assert migrate.current(settings) == "0001"
    assert outbox_indexes(empty_db) == v1


def test_version_3_keeps_what_was_published_and_what_was_pending(empty_db: str) -> None:
    """Upgrading to the relay cursor: published rows are not sent again, pending rows are
    picked up, rows in the middle of failing go on through the retry claim; downgrading
    marks what the cursor delivered, so a version-2 relay does not send it again."""
    from relay.queries import Queries
    from relay.rows import SEQ

    settings = Settings(database_url=empty_db)
    migrate.upgrade(settings, "0002")
    insert = ("insert into outbox (id, aggregatetype, aggregateid, type, payload, published_at, "
              "attempts, last_error) values (gen_random_uuid(), 'order', %s, 'T', '{}', "
              "%s, %s, %s) returning seq")
    with psycopg.connect(empty_db) as conn:
        published, waiting, retrying = (
            tuple(conn.execute(insert, values).fetchone() or ())
            for values in (("a", "2026-01-01", 0, None), ("b", None, 0, None),
                           ("c", None, 1, "boom")))
    migrate.upgrade(settings)
    queries = Queries.for_settings(settings)
    delivered = f"select seq, txid is not null, {queries.delivered('o')} from outbox o order by seq"
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert conn.execute(delivered).fetchall() == [
            (published[0], False, True), (waiting[0], True, False), (retrying[0], False, False)]
        retry = conn.execute(queries.claim_retry, {"shards": list(range(256)), "limit": 10})
        assert [r[SEQ] for r in retry] == [retrying[0]]
        # The relay delivers the pending row: its shard's cursor covers it.
        shard = conn.execute("select shard from outbox where seq = %s", waiting).fetchone()
        snapshot = conn.execute(queries.snapshot).fetchone()
        assert shard is not None and snapshot is not None
        conn.execute(queries.save_cursors, {"shards": [shard[0]], "done": [snapshot[0]],
                                            "win": [None], "upto": [0]})
        assert [r[2] for r in conn.execute(delivered)] == [True, True, False]
    migrate.downgrade(settings, "0002")
    with psycopg.connect(empty_db) as conn:
        marked = conn.execute("select seq, published_at is not null from outbox order by seq")
        assert marked.fetchall() == [(published[0], True), (waiting[0], True), (retrying[0], False)]


def test_no_drift_between_migrations_and_models(database_url: str) -> None:
    # database_url comes from the template, which the migrations built.
    assert migrate.check(Settings(database_url=database_url)) == []


def test_drift_is_reported(empty_db: str) -> None:
    settings = Settings(database_url=empty_db)
    migrate.upgrade(settings)
    with psycopg.connect(empty_db) as conn:
        conn.execute("alter table outbox drop column traceparent")
    problems = migrate.check(settings)
    assert problems
    assert "traceparent" in " ".join(problems)


def test_offline_sql_for_a_dba(empty_db: str) -> None:
    result = CliRunner().invoke(main, ["db", "upgrade", "--sql", "--database-url", empty_db,
                                       "--schema", "dba"])
    assert result.exit_code == 0, result.output
    assert 'then create schema "dba"' in result.output
    assert "CREATE TABLE dba.outbox" in result.output
    assert "CREATE TABLE dba.outbox_alembic_version" in result.output
    assert tables(empty_db, "dba") == set()  # nothing ran


def test_cli_upgrade_current_check_downgrade(empty_db: str) -> None:
    runner = CliRunner()
    env = {"OUTBOX_DATABASE_URL": empty_db}
    result = runner.invoke(main, ["db", "check"], env=env)
    assert result.exit_code == 1
    assert "run `outbox db upgrade`" in result.output
    result = runner.invoke(main, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["db", "current"], env=env).output.strip() == migrate.head()
    result = runner.invoke(main, ["db", "check"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok:")
    # Past the first revision the tables go, with their rows: only when confirmed.
    result = runner.invoke(main, ["db", "downgrade", "base"], env=env, input="n\n")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "drops public.outbox and public.inbox with every row" in result.output
    assert runner.invoke(main, ["db", "current"], env=env).output.strip() == migrate.head()
    result = runner.invoke(main, ["db", "downgrade", "-1"], env=env)  # no data lost: no question
    assert result.exit_code == 0, result.output
    # One below head now: each of these goes to base.
    for refused in (["base"], [f"-{len(migrate.revisions()) - 1}"], ["0001-1"]):
        result = runner.invoke(main, ["db", "downgrade", *refused], env=env)
        assert result.exit_code == EXIT_USAGE, (refused, result.output)
        assert "pass --yes" in result.output
    result = runner.invoke(main, ["db", "downgrade", "base", "--yes"], env=env)
    assert result.exit_code == 0, result.output
    assert runner.invoke(main, ["db", "current"], env=env).output.strip() == "none"


def test_offline_downgrade_sql_needs_no_database_and_no_confirmation() -> None:
    result = CliRunner().invoke(main, ["db", "downgrade", "base", "--sql", "--database-url",
                                       "postgresql://u@nowhere.invalid/db"])
    assert result.exit_code == 0, result.output
    assert "DROP TABLE public.outbox" in result.output


def test_unknown_revision_is_a_usage_error_naming_the_known_ones(empty_db: str) -> None:
    for step in ("upgrade", "downgrade"):
        result = CliRunner().invoke(main, ["db", step, "9999", "--database-url", empty_db])
        assert result.exit_code == EXIT_USAGE, result.output
        assert "'9999' is not a revision of this toolkit" in result.output
        assert "0001, 0002, 0003" in result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize(("url", "message"), [
    ("", "no database URL: set OUTBOX_DATABASE_URL"),
    ("mysql://u:p@h/db", "is not a PostgreSQL URL"),
])
def test_missing_or_malformed_database_url_is_one_clear_line(url: str, message: str) -> None:
    result = CliRunner().invoke(main, ["db", "current"], env={"OUTBOX_DATABASE_URL": url})
    assert result.exit_code == EXIT_CONFIG
    assert message in result.output
    assert "Traceback" not in result.output


def test_unreachable_database_hides_the_password() -> None:
    result = CliRunner().invoke(main, ["db", "current"], env={
        "OUTBOX_DATABASE_URL": "postgresql://me:hunter2@127.0.0.1:1/db"})
    assert result.exit_code == EXIT_UNAVAILABLE
    assert "hunter2" not in result.output
    assert "me:***@127.0.0.1:1" in result.output


def test_invalid_table_name_from_configuration_is_refused() -> None:
    result = CliRunner().invoke(main, ["db", "upgrade", "--outbox-table", "outbox; drop table x",
                                       "--database-url", "postgresql://u@h/db"])
    assert result.exit_code == EXIT_CONFIG
    assert "is not a plain SQL identifier" in result.output


def test_an_application_alembic_history_can_include_the_toolkit_tables(
        empty_db: str, tmp_path: Path) -> None:
    """The recipe of docs/migrations.md: call the toolkit's DDL from your own migration."""
    app = tmp_path / "app_migrations"
    (app / "versions").mkdir(parents=True)
    (app / "env.py").write_text(textwrap.dedent("""
        from alembic import context
        from sqlalchemy import create_engine
        url = context.config.get_main_option("sqlalchemy.url")
        engine = create_engine(url)
        with engine.connect() as conn:
            context.configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    """))
    (app / "script.py.mako").write_text("")
    (app / "versions" / "a1_customers.py").write_text(textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op
        revision, down_revision, branch_labels, depends_on = "a1", None, None, None
        def upgrade():
            op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True))
        def downgrade():
            op.drop_table("customers")
    """))
    (app / "versions" / "a2_outbox.py").write_text(textwrap.dedent("""
        from alembic import op
        from alembic.operations import Operations
        from outbox.migrations.ddl import create_schema_v1, drop_schema_v1
        revision, down_revision, branch_labels, depends_on = "a2", "a1", None, None
        def upgrade():
            create_schema_v1(Operations(op.get_context()), schema="public")
        def downgrade():
            drop_schema_v1(Operations(op.get_context()), schema="public")
    """))
    (app / "versions" / "a3_outbox_v2.py").write_text(textwrap.dedent("""
        from alembic import op
        from alembic.operations import Operations
        from outbox.migrations.ddl import downgrade_schema_v2, upgrade_schema_v2
        revision, down_revision, branch_labels, depends_on = "a3", "a2", None, None
        def upgrade():
            upgrade_schema_v2(Operations(op.get_context()), schema="public")
        def downgrade():
            downgrade_schema_v2(Operations(op.get_context()), schema="public")
    """))
    (app / "versions" / "a4_outbox_v3.py").write_text(textwrap.dedent("""
        from alembic import op
        from alembic.operations import Operations
        from outbox.migrations.ddl import downgrade_schema_v3, upgrade_schema_v3
        revision, down_revision, branch_labels, depends_on = "a4", "a3", None, None
        def upgrade():
            upgrade_schema_v3(Operations(op.get_context()), schema="public")
        def downgrade():
            downgrade_schema_v3(Operations(op.get_context()), schema="public")
    """))
    (app / "versions" / "a5_outbox_v5.py").write_text(textwrap.dedent("""
        from alembic import op
        from alembic.operations import Operations
        from outbox.migrations.ddl import downgrade_schema_v5, upgrade_schema_v5
        revision, down_revision, branch_labels, depends_on = "a5", "a4", None, None
        def upgrade():
            upgrade_schema_v5(Operations(op.get_context()), schema="public")
        def downgrade():
            downgrade_schema_v5(Operations(op.get_context()), schema="public")
    """))
    (app / "versions" / "a6_outbox_v6.py").write_text(textwrap.dedent("""
        from alembic import op
        from alembic.operations import Operations
        from outbox.migrations.ddl import downgrade_schema_v6, upgrade_schema_v6
        revision, down_revision, branch_labels, depends_on = "a6", "a5", None, None
        def upgrade():
            upgrade_schema_v6(Operations(op.get_context()), schema="public")
        def downgrade():
            downgrade_schema_v6(Operations(op.get_context()), schema="public")
    """))
    config = Config()
    config.set_main_option("script_location", str(app))
    config.set_main_option("sqlalchemy.url",
                           empty_db.replace("postgresql://", "postgresql+psycopg://"))
    command.upgrade(config, "head")
    assert {"customers", "outbox", "inbox", "alembic_version"} <= tables(empty_db)
    # The tables match the toolkit's models exactly (checked without the toolkit's own
    # version table, which this application does not use).
    settings = Settings(database_url=empty_db)
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(settings.sqlalchemy_url())
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={
            "include_object": migrate.include_toolkit_objects(settings)})
        assert compare_metadata(ctx, migrate.target_metadata(settings)) == []
    engine.dispose()
    command.downgrade(config, "a1")
    assert "outbox" not in tables(empty_db)


def functions(url: str, schema: str = "public") -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute(
            "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname = %s", (schema,))}


def test_version_4_installs_the_publish_function_and_check_verifies_it(empty_db: str) -> None:
    settings = Settings(database_url=empty_db, db_schema="Billing", outbox_table="events_out")
    migrate.upgrade(settings, "0003")
    assert "events_out_publish" not in functions(empty_db, "Billing")
    migrate.upgrade(settings)
    assert "events_out_publish" in functions(empty_db, "Billing")
    assert migrate.check(settings) == []
    # Writers configured with another topic template or limit than the installed body.
    other = settings.model_copy(update={"topic_template": "shop.{aggregatetype}"})
    (problem,) = migrate.check(other)
    assert "function Billing.events_out_publish(...) was installed with other settings" in (
        problem)
    assert "'shop.{aggregatetype}'" in problem
    result = CliRunner().invoke(main, ["db", "check", "--database-url", empty_db, "--schema",
                                       "Billing", "--outbox-table", "events_out",
                                       "--topic-template", "shop.{aggregatetype}"])
    assert result.exit_code == 1
    assert "run `outbox db upgrade`" in result.output
    migrate.upgrade(other)  # at head already: only the function is rendered again
    assert migrate.check(other) == []
    with psycopg.connect(empty_db) as conn:
        conn.execute('drop function "Billing".events_out_publish')
    assert migrate.check(other) == [
        "function Billing.events_out_publish(...) is not installed: run `outbox db upgrade`"]
    migrate.downgrade(other, "0003")
    migrate.upgrade(other)
    assert migrate.check(other) == []
    migrate.downgrade(other, "0003")
    assert "events_out_publish" not in functions(empty_db, "Billing")


def test_offline_sql_installs_the_same_function(empty_db: str, pg_url: str) -> None:
    """A DBA's script (`db upgrade --sql`) gives the body `db check` expects."""
    settings = Settings(database_url=empty_db, topic_template="{aggregatetype}.v1",
                        max_record_bytes=500_000)
    script = migrate.upgrade(settings, sql=True)
    assert 'create or replace function "public"."outbox_publish"(' in script
    assert "500000" in script
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(script.encode())
    assert migrate.current(settings) == migrate.head()
    assert migrate.check(settings) == []
    with psycopg.connect(empty_db) as conn, pytest.raises(
            psycopg.errors.InvalidParameterValue, match="v1"):
        conn.execute("select outbox_publish('bad type', 'k', 'T', '{}')")
