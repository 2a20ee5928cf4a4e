"""``outbox forward run`` as a process: kill -9 mid-stream, and bad configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from outbox.exit_codes import EXIT_CONFIG
from tests.forward.conftest import event, send, wait_for
from tests.forward.endpoint import Endpoint
from tests.harness.db import with_dbname
from tests.harness.stack import ROOT

OUTBOX = str(ROOT / ".venv" / "bin" / "outbox")


def forward_process(config: Path, database_url: str, bootstrap: str,
                    log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OUTBOX_DATABASE_URL": database_url,
           "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "HOOK_TOKEN": "t0ken-never-logged"}
    with log.open("ab") as out:
        return subprocess.Popen([OUTBOX, "forward", "run", "--config", str(config),
                                 "--log-format", "text"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill_9_mid_stream_posts_every_event_duplicates_only_with_the_same_key(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path) -> None:
    endpoint = Endpoint().start()
    config = tmp_path / "forward.toml"
    config.write_text(f"""
group = "fwd-kill"
[routes.hook]
url = "{endpoint.url}"
topics = ["{topic_ready}"]
headers = {{ Authorization = "Bearer ${{env:HOOK_TOKEN}}" }}
""")
    messages = [event(f"k{n % 20}", n) for n in range(600)]
    send(kafka_bootstrap, topic_ready, [m for _, m in messages])
    log = tmp_path / "forward.log"
    proc = forward_process(config, database_url, kafka_bootstrap, log)
    try:
        wait_for(lambda: len(endpoint.received) >= 150, timeout=60, what="150 posted")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = len(endpoint.received)
        proc = forward_process(config, database_url, kafka_bootstrap, log)
        wait_for(lambda: {r.key for r in endpoint.received} >= {e for e, _ in messages},
                 timeout=90, what="every event posted after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        endpoint.stop()
    assert killed_at < 600
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for request in endpoint.received:
        body = request.json
        assert request.key == body["eventId"]  # a duplicate carries its event's own key
        if request.key not in seen:
            seen.add(request.key)
            first_seen[body["key"]].append(body["n"])
    for numbers in first_seen.values():
        assert numbers == sorted(numbers)
    duplicates = len(endpoint.received) - len(seen)
    print(f"posted {len(endpoint.received)} requests for 600 events ({duplicates} duplicates)")
    assert "t0ken-never-logged" not in log.read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OUTBOX, "forward", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_bad_configuration_is_one_line_and_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "forward.toml"
    bad.write_text('[routes.hook]\nurl = "http://127.0.0.1:9/x"\ntopics = ["t"]\n'
                   'timeout = "5s"\n')
    cases = [
        (["check", "--config", str(bad)], "routes.hook.timeout"),
        (["check", "--config", str(tmp_path / "missing.toml")], "no such configuration file"),
        (["check", "--url", "http://x", "--topic", "t", "--header",
          "Authorization: Bearer ${env:NOT_SET_ANYWHERE}"], "NOT_SET_ANYWHERE is not set"),
        (["run", "--url", "http://x"], "--topic: Field required"),
    ]
    for args, expected in cases:
        result = run_cli(*args)
        assert result.returncode == EXIT_CONFIG, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, result.stderr)


def test_run_without_an_inbox_table_says_so(pg_url: str, kafka_bootstrap: str) -> None:
    name = f"fwd_noinbox_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(with_dbname(pg_url, "postgres"), autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        result = run_cli("run", "--url", "http://127.0.0.1:9/x", "--topic", "t", env={
            "OUTBOX_DATABASE_URL": with_dbname(pg_url, name),
            "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    finally:
        with psycopg.connect(with_dbname(pg_url, "postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "no inbox table" in result.stderr and "outbox db upgrade" in result.stderr
