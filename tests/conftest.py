"""Shared fixtures: the real local stack (PostgreSQL, Kafka, Kafka Connect).

Tests use real services. In CI (``CI=true``) a service that cannot be reached fails the
run; on a developer machine the test is skipped with a hint to run ``make stack-up``.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from tests.harness import db
from tests.harness.kafka import unique_topic
from tests.harness.stack import load_stack_env, service_missing

load_stack_env()

TEMPLATE_DB = "outbox_test_template"


def _toolkit_schema(url: str) -> None:
    """Template builder: the toolkit's own migrations, default schema and table names."""
    from outbox import migrate
    from outbox.settings import Settings

    migrate.upgrade(Settings(database_url=url))


db.TEMPLATE_BUILDERS.append(_toolkit_schema)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """libpq URL of the stack's database (``OUTBOX_DATABASE_URL``)."""
    url = os.environ.get("OUTBOX_DATABASE_URL")
    if not url:
        service_missing("PostgreSQL", "OUTBOX_DATABASE_URL is not set")
        raise AssertionError("unreachable")
    url = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", str(exc).strip().splitlines()[0])
    return url


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> str:
    """A template database with the toolkit's schema, built once and reused.

    Its name carries a digest of everything that shapes the schema, so a changed schema
    gets a new template while concurrent test sessions (xdist workers, other checkouts)
    keep using theirs; nothing is dropped under anyone's feet.
    """
    name = f"{TEMPLATE_DB}_{db.schema_digest()}"
    db.build_template(pg_url, name)
    return name


@pytest.fixture
def database_url(pg_url: str, template_db: str) -> Iterator[str]:
    """A fresh database for this test, cloned from the template; dropped afterwards."""
    name = db.clone_database(pg_url, template_db)
    try:
        yield db.with_dbname(pg_url, name)
    finally:
        db.drop_database(pg_url, name)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the stack's Kafka broker (``OUTBOX_KAFKA_BOOTSTRAP_SERVERS``)."""
    bootstrap = os.environ.get("OUTBOX_KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        service_missing("Kafka", "OUTBOX_KAFKA_BOOTSTRAP_SERVERS is not set")
        raise AssertionError("unreachable")
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 3000})
    try:
        admin.list_topics(timeout=5)
    except Exception as exc:
        service_missing("Kafka", f"{bootstrap}: {exc}")
    return bootstrap


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (not yet created)."""
    return unique_topic(request.node.name)


@pytest.fixture(scope="session")
def connect_url() -> str:
    """REST URL of the stack's Kafka Connect worker (``OUTBOX_CONNECT_URL``)."""
    url = os.environ.get("OUTBOX_CONNECT_URL")
    if not url:
        service_missing("Kafka Connect", "OUTBOX_CONNECT_URL is not set")
        raise AssertionError("unreachable")
    try:
        with urllib.request.urlopen(url + "/", timeout=5) as resp:
            resp.read()
    except (OSError, urllib.error.URLError) as exc:
        service_missing("Kafka Connect", f"{url}: {exc}")
    return url
