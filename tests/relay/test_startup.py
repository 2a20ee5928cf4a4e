"""`outbox relay run` checks the database and the broker before it calls itself healthy,
and librdkafka's own log goes through the toolkit's logger as JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from outbox.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from tests.test_cli_errors import COMMAND

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_relay_left_behind() -> Iterator[None]:
    """A relay that did not stop as the test expected is killed, not left running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def relay(url: str, bootstrap: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*COMMAND, "relay", "run", *args],
                            env={**os.environ, "OUTBOX_DATABASE_URL": url,
                                 "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    STARTED.append(proc)
    return proc


def health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


def records(stderr: str) -> list[dict[str, Any]]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        assert line.startswith("{"), f"not a JSON log line: {line[:300]}"
        parsed.append(json.loads(line))
    return parsed


def test_unhealthy_during_the_start_up_checks_then_one_line_and_exit_6(
        outbox_url: str) -> None:
    port = free_port()
    proc = relay(outbox_url, "127.0.0.1:1", "--metrics-port", str(port),
                 "--startup-timeout", "5")
    seen = None
    deadline = time.monotonic() + 5
    while seen is None and time.monotonic() < deadline and proc.poll() is None:
        seen = health(port)
        time.sleep(0.1)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_UNAVAILABLE, stderr
    assert seen is not None and seen[0] == 503, seen
    assert seen[1]["detail"] == "start-up checks"
    errors = [r for r in records(stderr) if r["level"] == "error"]
    assert [r["action"] for r in errors] == ["service_unavailable"]
    assert "Kafka 127.0.0.1:1 did not answer within 5s" in errors[0]["message"]
    assert not any(r.get("action") == "relay_start" for r in records(stderr))


def test_a_wrong_password_is_one_line_and_exit_3(outbox_url: str, kafka_bootstrap: str) -> None:
    proc = relay(outbox_url.replace("outbox:outbox@", "outbox:Wr0ng@"), kafka_bootstrap)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CONFIG, stderr
    errors = [r for r in records(stderr) if r["level"] == "error"]
    assert len(errors) == 1 and "password authentication failed" in errors[0]["message"]
    assert "Wr0ng" not in stderr


def test_librdkafka_logs_through_the_toolkit_logger_as_json(
        outbox_url: str, kafka_bootstrap: str) -> None:
    """librdkafka's own lines (its broker debug log, asked for with debug=broker) arrive
    as JSON records of outbox.librdkafka, never as raw lines on stderr."""
    proc = relay(outbox_url, kafka_bootstrap, "--poll-interval", "0.2", "--log-level",
                 "debug", "--kafka-config", "debug=broker")
    try:
        time.sleep(6)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, stderr
    parsed = records(stderr)
    assert any(r["action"] == "relay_start" for r in parsed if "action" in r)
    assert any(r["logger"] == "outbox.librdkafka" and kafka_bootstrap in r["message"]
               for r in parsed), stderr[-3000:]


def test_kafka_properties_the_relay_replaces_are_named_at_start(
        outbox_url: str, kafka_bootstrap: str) -> None:
    """--kafka-config acks=0 is not silently ignored: one warning names what the relay
    keeps instead (acks=all, idempotence), and the relay runs."""
    proc = relay(outbox_url, kafka_bootstrap, "--processes", "1", "--kafka-config", "acks=0",
                 "--kafka-config", "enable.idempotence=false", "--kafka-config", "linger.ms=1")
    try:
        time.sleep(4)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, stderr
    parsed = records(stderr)
    assert any(r.get("action") == "relay_start" for r in parsed)
    warned = [r for r in parsed if r.get("action") == "kafka_config_replaced"]
    assert len(warned) == 1, stderr[-3000:]
    assert warned[0]["level"] == "warning"
    message = warned[0]["message"]
    assert "acks=0 -> all" in message and "enable.idempotence=false -> true" in message
    assert "linger.ms" not in message
