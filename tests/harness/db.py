"""Per-test PostgreSQL databases cloned from a template built once per session."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

# Builders add the toolkit's schema to the template (migrations, extensions ...). Each one
# receives a libpq URL of the template database; the list is extended by the modules that
# own a schema, so the template holds everything tests need and each test gets a copy.
TemplateBuilder = Callable[[str], None]
TEMPLATE_BUILDERS: list[TemplateBuilder] = []


ROOT = Path(__file__).resolve().parents[2]
SCHEMA_SOURCES = ("outbox/tables.py", "outbox/migrations", "outbox/sql", "outbox/rules.py",
                  "outbox/publish_sql.py", "tests/harness/db.py", "tests/conftest.py")


def schema_digest() -> str:
    """A short digest of the files that shape the test template's schema."""
    digest = hashlib.sha256()
    for source in SCHEMA_SOURCES:
        path = ROOT / source
        files = (sorted(p for p in path.rglob("*") if p.suffix in (".py", ".sql"))
                 if path.is_dir() else [path])
        for file in files:
            if file.exists():
                digest.update(str(file.relative_to(ROOT)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()[:10]


def with_dbname(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname``, as a ``postgresql://`` URL.

    A URL (not a libpq keyword string) because the toolkit's settings, SQLAlchemy and the
    CLI all take URLs.
    """
    params = conninfo_to_dict(url)
    user = quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    return f"postgresql://{auth}{host}:{port}/{quote(dbname, safe='')}"


def admin_connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(with_dbname(url, "postgres"), autocommit=True, connect_timeout=3)


def build_template(url: str, name: str) -> None:
    """Create (or re-create) the template database ``name`` under an advisory lock.

    Several pytest-xdist workers may race to build it: the lock makes one build while the
    others wait and then find it present.
    """
    with admin_connect(url) as conn:
        conn.execute("select pg_advisory_lock(hashtext(%s))", (name,))
        try:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (name,)
            ).fetchone()
            if exists:
                return
            building = f"{name}_building"
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(
                sql.Identifier(building)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(building)))
            for builder in TEMPLATE_BUILDERS:
                builder(with_dbname(url, building))
            conn.execute(sql.SQL("alter database {} rename to {}").format(
                sql.Identifier(building), sql.Identifier(name)))
            conn.execute(sql.SQL("alter database {} is_template true").format(
                sql.Identifier(name)))
        finally:
            conn.execute("select pg_advisory_unlock(hashtext(%s))", (name,))


def clone_database(url: str, template: str, prefix: str = "t") -> str:
    """Create a fresh database from ``template``; returns its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin_connect(url) as conn:
        conn.execute(sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return name


def drop_database(url: str, name: str) -> None:
    with admin_connect(url) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(name)))


def login_roles(url: str, password: str, prefix: str) -> Iterator[Callable[[list[str]], str]]:
    """For a fixture: ``make(grants)`` creates a login role of the test in database ``url``
    with ``grants`` (``{role}`` filled in) and returns its URL; dropped afterwards."""
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    host = url.split("@", 1)[1]

    def make(grants: list[str]) -> str:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"create role {role} login password '{password}'")
            for grant in grants:
                conn.execute(grant.format(role=role))
        return f"postgresql://{role}:{password}@{host}"

    yield make
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("select from pg_roles where rolname = %s", (role,)).fetchone():
            conn.execute(f"drop owned by {role}")
            conn.execute(f"drop role {role}")
