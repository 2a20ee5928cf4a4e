"""``outbox worker MODULE:APP`` as a process (real PostgreSQL and Kafka): it consumes with
/health and /metrics and a static member id, drains on the first signal and exits at once
on the second, and bad arguments are one line and exit code 3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from outbox.exit_codes import EXIT_CONFIG, EXIT_INTERRUPTED
from services.launcher import free_port
from tests.consumers.support import effects, ensure_effects, thing, wait_for
from tests.harness.kafka import produce
from tests.harness.stack import ROOT

# The `outbox` command as installed (python -m outbox.cli has no __main__ block).
OUTBOX = [sys.executable, "-c", "import sys; from outbox.cli import main; sys.exit(main())"]


def start(database_url: str, bootstrap: str, topic: str, log: Path, *args: str,
          **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*OUTBOX, "worker", "tests.consumers.worker_app:app", *args], cwd=ROOT,
            stdout=out, stderr=subprocess.STDOUT, env={
                **os.environ, "OUTBOX_DATABASE_URL": database_url,
                "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "OUTBOX_TEST_TOPIC": topic,
                **env})


def health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def instance_ids(bootstrap: str, group: str) -> list[str | None]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [description] = [f.result(30) for f in admin.describe_consumer_groups([group]).values()]
    return [m.group_instance_id for m in description.members]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_worker_runs_an_app_with_health_a_static_id_and_drains_on_sigterm(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path,
        kind: str) -> None:
    ensure_effects(database_url)
    port, group = free_port(), f"g-worker-{uuid.uuid4().hex[:8]}"
    proc = start(database_url, kafka_bootstrap, topic_ready, tmp_path / "worker.log",
                 "--metrics-port", str(port), OUTBOX_TEST_GROUP=group,
                 OUTBOX_TEST_HANDLER_KIND=kind, OUTBOX_CONSUMER_INSTANCE_ID="worker-7")
    try:
        produce(kafka_bootstrap, topic_ready, [thing(1), thing(2, key="k2")])
        wait_for(lambda: len(effects(database_url)) == 2, timeout=60)
        wait_for(lambda: health(port)[0] == 200, timeout=30)
        assert health(port)[1]["reason"] == "consuming"
        [member] = instance_ids(kafka_bootstrap, group)
        assert member is not None and member.startswith("worker-7.")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-2000:]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    actions = {line.get("action") for line in lines}
    assert {"consumer_start", "consumer_stopping", "consumer_stopped"} <= actions, actions


def test_a_second_signal_exits_at_once_with_130(
        database_url: str, kafka_bootstrap: str, topic_ready: str, tmp_path: Path) -> None:
    ensure_effects(database_url)
    proc = start(database_url, kafka_bootstrap, topic_ready, tmp_path / "worker.log",
                 OUTBOX_TEST_HANDLER_SLEEP="20")
    try:
        produce(kafka_bootstrap, topic_ready, [thing(1)])
        log = tmp_path / "worker.log"
        wait_for(lambda: "consumer_start" in log.read_text(), timeout=60)
        time.sleep(2)  # the slow handler is running: the first signal has to wait for it
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first signal did not wait for the batch"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == EXIT_INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
    assert effects(database_url) == []  # killed mid-handler: nothing committed


@pytest.mark.parametrize(("app", "says"), [
    ("tests.consumers.worker_app", "is not MODULE:ATTRIBUTE"),
    ("tests.consumers.no_such_module:app", "no module named 'tests.consumers.no_such_module'"),
    ("tests.consumers.worker_app:missing", "has no attribute 'missing'"),
    ("tests.consumers.worker_app:not_a_consumer", "is int, not a Consumer"),
    ("tests.consumers.worker_app:bad_handler", "parameter 'mystery' cannot be given"),
])
def test_a_bad_app_is_one_line_and_exit_code_3(app: str, says: str) -> None:
    proc = subprocess.run([*OUTBOX, "worker", app,
                           "--log-format", "text"], cwd=ROOT, capture_output=True,
                          timeout=60, env={**os.environ, "OUTBOX_DATABASE_URL":
                                           "postgresql://u:secret@127.0.0.1:1/x"})
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_a_metrics_port_in_use_is_one_line_and_exit_code_3(
        database_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(database_url, kafka_bootstrap, "unused-topic", tmp_path / "w.log",
                     "--metrics-port", str(port))
        assert proc.wait(60) == EXIT_CONFIG
    log = (tmp_path / "w.log").read_text().strip().splitlines()
    assert len(log) == 1, log
    assert f"cannot serve /metrics on 127.0.0.1:{port}: it is already in use" in log[0], log
