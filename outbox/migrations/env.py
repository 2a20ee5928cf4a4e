"""Alembic environment of the toolkit's own migrations (run through ``outbox.migrate``).

The toolkit keeps its own version table, ``outbox_alembic_version`` in the configured
schema, so it never touches an application's ``alembic_version``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from outbox.migrate import VERSION_TABLE, include_toolkit_objects, target_metadata
from outbox.migrations.ddl import create_schema_sql
from outbox.settings import Settings

config = context.config
settings: Settings = config.attributes.get("settings") or Settings()


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=target_metadata(settings),
        version_table=VERSION_TABLE,
        version_table_schema=settings.db_schema,
        include_schemas=True,
        include_object=include_toolkit_objects(settings),
        **kw,  # type: ignore[arg-type]
    )


SCHEMA_DDL = create_schema_sql(settings.db_schema)


def run_offline() -> None:
    _configure(url=settings.sqlalchemy_url(), literal_binds=True,
               dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        # The version table lives in the schema: the DBA's script creates it first.
        context.execute(SCHEMA_DDL)
        context.run_migrations()


def _run(connection: Connection) -> None:
    # The version table lives in the schema: it must exist before Alembic looks for it.
    connection.exec_driver_sql(SCHEMA_DDL)
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(settings.sqlalchemy_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
