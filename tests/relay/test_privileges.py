"""The relay as a role that lacks a grant: at start one line and exit 3 (never a traceback),
and a grant revoked while it runs stops it with exit 7 instead of leaving it running
without the side thread that needed it. Against the real database and broker."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from outbox.exit_codes import EXIT_CONFIG, EXIT_WORKER_DIED
from outbox.publish import Event, publish
from relay.loop import Relay, RelayOptions
from tests.harness import db
from tests.relay.conftest import relay_settings
from tests.relay.test_startup import records
from tests.test_cli_errors import COMMAND

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

PASSWORD = "privilege-test-pw"
# What `outbox db roles` grants the relay role (outbox/sql/roles.sql), one statement each.
RELAY_GRANTS = [
    "grant usage on schema public to {role}",
    "grant select, delete on outbox to {role}",
    "grant update (published_at, attempts, last_error, failed_at) on outbox to {role}",
    "grant select, insert, update on outbox_relay_cursor to {role}",
]


@pytest.fixture
def login(outbox_url: str) -> Iterator[Callable[[list[str]], str]]:
    """A login role of this test given ``grants``; its URL."""
    yield from db.login_roles(outbox_url, PASSWORD, "t_priv")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_role_without_the_relays_grants_is_one_line_and_exit_3(
        login: Callable[[list[str]], str], kafka_bootstrap: str, processes: str) -> None:
    url = login(["grant usage on schema public to {role}", "grant select on outbox to {role}"])
    result = subprocess.run([*COMMAND, "relay", "run", "--processes", processes,
                             "--retention", "7d"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "OUTBOX_DATABASE_URL": url,
                                 "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    errors = [r for r in records(result.stderr) if r["level"] == "error"]
    assert len(errors) == 1, errors
    message = errors[0]["message"]
    assert "may not do what the relay does with public.outbox" in message
    assert "UPDATE (published_at, attempts, last_error, failed_at)" in message
    assert "outbox_relay_cursor" in message and "DELETE on the outbox table" in message
    assert "SELECT on the outbox table" not in message  # that one it has
    assert PASSWORD not in result.stderr


def test_delete_is_only_needed_with_retention(
        login: Callable[[list[str]], str], kafka_bootstrap: str, prefix: str) -> None:
    url = login([g.replace("select, delete on outbox", "select on outbox")
                 for g in RELAY_GRANTS])
    settings = relay_settings(url, kafka_bootstrap, prefix)
    relay = Relay(settings, RelayOptions(listen=False, retention_seconds=3600.0))
    assert relay.run() == EXIT_CONFIG  # with retention: refused at start
    relay = Relay(settings, RelayOptions(listen=False))
    thread = threading.Thread(target=relay.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not relay.health.snapshot()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.health.snapshot()[0], relay.health.snapshot()
    finally:
        relay.request_stop()
        thread.join(60)


def test_a_side_thread_that_stops_stops_the_relay_with_exit_7(
        outbox_url: str, login: Callable[[list[str]], str], kafka_bootstrap: str,
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """Retention's DELETE revoked while the relay runs: the purge thread's error stops the
    relay (unhealthy, then exit 7 after draining) rather than leaving rows to pile up."""
    url = login(RELAY_GRANTS)
    with psycopg.connect(outbox_url) as conn:
        publish(conn, Event(aggregate_type="priv", aggregate_id="a-1", event_type="Made",
                            payload={"n": 1}))
        conn.commit()
    relay = Relay(relay_settings(url, kafka_bootstrap, prefix),
                  RelayOptions(listen=True, retention_seconds=0.0, purge_interval=0.3))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(relay.run()))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while relay.published_total == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert relay.health.snapshot()[0], relay.health.snapshot()
        role = url.split("//", 1)[1].split(":", 1)[0]
        with psycopg.connect(outbox_url, autocommit=True) as conn:
            conn.execute(f"revoke delete on outbox from {role}")
        thread.join(30)
    finally:
        relay.request_stop()
        thread.join(60)
    assert codes == [EXIT_WORKER_DIED]
    ok, body = relay.health.snapshot()
    assert not ok and "relay-purge" in str(body["detail"])
    died = [r for r in caplog.records if getattr(r, "action", None) == "thread_died"]
    assert len(died) == 1 and "permission denied" in died[0].getMessage()


def test_a_grant_the_loop_needs_revoked_while_it_runs_is_one_line_and_exit_3(
        outbox_url: str, login: Callable[[list[str]], str], kafka_bootstrap: str,
        prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    url = login(RELAY_GRANTS)
    relay = Relay(relay_settings(url, kafka_bootstrap, prefix),
                  RelayOptions(listen=False, poll_interval=0.2, progress_interval=0.0))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(relay.run()))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not relay.health.snapshot()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        role = url.split("//", 1)[1].split(":", 1)[0]
        with psycopg.connect(outbox_url, autocommit=True) as conn:
            conn.execute(f"revoke insert, update on outbox_relay_cursor from {role}")
        with psycopg.connect(outbox_url) as conn:  # progress to write: the revoked grant
            publish(conn, Event(aggregate_type="priv", aggregate_id="a-2", event_type="Made",
                                payload={"n": 2}))
            conn.commit()
        thread.join(30)
    finally:
        relay.request_stop()
        thread.join(60)
    assert codes == [EXIT_CONFIG]
    refused = [r for r in caplog.records if r.getMessage().startswith(
        "the database refused the relay: permission denied for table outbox_relay_cursor")]
    assert len(refused) == 1
    assert not [r for r in caplog.records if getattr(r, "action", None) == "relay_crash"]
