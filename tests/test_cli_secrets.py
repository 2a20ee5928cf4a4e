"""No secret is ever printed: every command runs with a canary secret in every place a
secret can be given, and all its output and logs are searched for it.

The places: the database URL's user info, its ``?password=`` query, libpq's keyword form
(refused, without echoing it), ``--kafka-config sasl.password=...``,
``OUTBOX_KAFKA_CONFIG`` (valid JSON, and malformed), and the Kafka Connect URL's
``user:pass@``. The database canary is a real role's password, so commands take their
normal paths (and the relay runs), not only their error paths.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from psycopg import sql

from connect.client import ConnectClient
from outbox.cli import main
from tests.harness import db
from tests.test_cli_errors import COMMAND, COMMANDS, leaf_commands

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.connect]

# Commands whose clients are C libraries (librdkafka): run as real processes, so a line
# written straight to stderr would be seen too.
REAL_PROCESS = {("replay",), ("dlq", "list"), ("dlq", "redrive")}
# Daemons: run as processes for a few seconds, then SIGTERM.
DAEMONS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("relay", "run"): (), ("connect", "exporter"): ("--port", "0"),
    ("worker",): ("tests.consumers.worker_app:cli_walk",),
    ("forward", "run"): ("--url", "http://127.0.0.1:9/hook", "--topic", "t-forward")}


@dataclass(frozen=True)
class Canaries:
    database: str
    kafka: str
    kafka_env: str
    connect: str
    keyword: str

    def all(self) -> list[str]:
        return [self.database, self.kafka, self.kafka_env, self.connect, self.keyword]


@dataclass(frozen=True)
class Place:
    """Where the database URL carries the canary, and the rest of the environment."""

    env: dict[str, str]
    args: tuple[str, ...]


def _canary(what: str) -> str:
    return f"{what}Canary{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def canaries() -> Canaries:
    return Canaries(_canary("Db"), _canary("Sasl"), _canary("Env"), _canary("Conn"),
                    _canary("Kw"))


@pytest.fixture(scope="module")
def places(pg_url: str, template_db: str, kafka_bootstrap: str, connect_url: str,
           canaries: Canaries) -> Iterator[dict[str, Place]]:
    """A database with the toolkit, reachable by a role whose password is the canary."""
    name = db.clone_database(pg_url, template_db, prefix="t_secrets")
    role = f"canary_{uuid.uuid4().hex[:8]}"
    with db.admin_connect(pg_url) as conn:
        # A superuser: every command takes its normal path (a throwaway role, loopback).
        conn.execute(sql.SQL("create role {} login superuser password {}").format(
            sql.Identifier(role), sql.Literal(canaries.database)))
    host = pg_url.split("@", 1)[1].split("/", 1)[0]
    connect = connect_url.replace("://", f"://admin:{canaries.connect}@", 1)
    common = {"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "OUTBOX_CONNECT_URL": connect,
              "OUTBOX_KAFKA_CONFIG": f'{{"sasl.oauthbearer.client.secret": '
                                     f'"{canaries.kafka_env}"}}'}
    kafka = ("--kafka-config", f"sasl.password={canaries.kafka}", "--log-level", "debug")
    password = quote(canaries.database, safe="")
    try:
        yield {
            "url user info": Place({**common, "OUTBOX_DATABASE_URL":
                                    f"postgresql://{role}:{password}@{host}/{name}"}, kafka),
            "url query": Place({**common, "OUTBOX_DATABASE_URL":
                                f"postgresql://{role}@{host}/{name}?password={password}"}, kafka),
            "keyword form": Place({**common, "OUTBOX_DATABASE_URL":
                                   f"host={host.split(':')[0]} dbname={name} user={role} "
                                   f"password={canaries.keyword}"}, kafka),
            "malformed OUTBOX_KAFKA_CONFIG": Place(
                {**common, "OUTBOX_DATABASE_URL": f"postgresql://{role}:{password}@{host}/{name}",
                 "OUTBOX_KAFKA_CONFIG": f'{{"sasl.password": "{canaries.kafka_env}"'}, kafka),
        }
    finally:
        db.drop_database(pg_url, name)
        with db.admin_connect(pg_url) as conn:
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))


def _args(command: tuple[str, ...], connector: str) -> tuple[str, ...]:
    """Arguments that take each command down its normal path where there is one."""
    special: dict[tuple[str, ...], tuple[str, ...]] = {
        ("db", "downgrade"): ("-1",), ("db", "roles"): ("--sql",),
        ("connect", "apply"): ("--name", connector), ("connect", "status"): ("--name", connector),
        ("connect", "delete"): ("--name", connector)}
    return special.get(command, COMMANDS[command].args)


def _run(command: tuple[str, ...], args: tuple[str, ...], place: Place) -> str:
    if command in REAL_PROCESS:
        done = subprocess.run([*COMMAND, *command, *args, *place.args],
                              env={**os.environ, **place.env}, capture_output=True, text=True,
                              timeout=90, stdin=subprocess.DEVNULL)
        return done.stdout + done.stderr
    result = CliRunner().invoke(main, [*command, *args, *place.args], env=place.env)
    escaped = "" if isinstance(result.exception, SystemExit | None) else repr(result.exception)
    return result.stdout + result.stderr + escaped


def _daemon_output(place: Place, command: tuple[str, ...] = ("relay", "run")) -> str:
    """A daemon for a few seconds (start-up, work, drain), then SIGTERM."""
    proc = subprocess.Popen([*COMMAND, *command, *DAEMONS[command], *place.args],
                            env={**os.environ, **place.env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(6)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # did not stop: kill it rather than leave it running
            proc.kill()
            proc.communicate(timeout=10)
    return str(output)


def test_no_command_prints_a_secret_given_in_any_place(
        places: dict[str, Place], canaries: Canaries) -> None:
    connector = f"t-secrets-{uuid.uuid4().hex[:8]}"
    leaked: list[str] = []
    seen = 0
    try:
        for where, place in places.items():
            outputs: dict[tuple[str, ...], str] = {
                command: _daemon_output(place, command) for command in DAEMONS}
            for command in leaf_commands():
                if command not in DAEMONS:
                    outputs[command] = _run(command, _args(command, connector), place)
            # ... and what the connector ended up with, as Kafka Connect shows it.
            outputs[("connect", "status", "--name")] = _run(
                ("connect", "status"), ("--name", connector), place)
            for command, text in outputs.items():
                seen += len(text)
                leaked += [f"{where}: `{' '.join(command)}` printed the {secret[:4]} canary"
                           for secret in canaries.all() if secret in text
                           or quote(secret, safe="") in text]
            assert "relay starting" in outputs[("relay", "run")] or where in (
                "keyword form", "malformed OUTBOX_KAFKA_CONFIG"), outputs[("relay", "run")]
    finally:
        ConnectClient(os.environ["OUTBOX_CONNECT_URL"]).delete(connector)
    assert not leaked, "\n".join(leaked)
    assert seen > 10_000  # the commands did talk: there was output to search


def test_the_relay_log_masks_a_password_in_the_query_string(
        places: dict[str, Place], canaries: Canaries) -> None:
    """The relay's first log line printed ?password=... as it was (issue 14)."""
    output = _daemon_output(places["url query"])
    assert "?password=***" in output, output[:2000]
    assert canaries.database not in output


def test_a_database_url_cannot_smuggle_a_secret_into_its_own_error() -> None:
    for url, secret in (("postgresql://u:S3cretA1@h:x1/db", "S3cretA1"),
                        ("postgresql://u@h:5432/db?password=S3cretA2&port=x", "S3cretA2"),
                        ("host=h password=S3cretA3 port=x", "S3cretA3"),
                        ("host=h password='S3cret A4'", "S3cret A4")):
        result = CliRunner().invoke(main, ["db", "current", "--database-url", url])
        assert result.exit_code == 3, result.output
        assert secret not in result.output, result.output
