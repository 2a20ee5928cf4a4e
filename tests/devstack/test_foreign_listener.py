"""`devstack/stack.py up` never adopts a server it did not start.

A Kafka Connect worker left over from another clone's killed run answered on the port; the
next run's `up` took it for its own and every Debezium test then failed on the foreign
worker's config. These tests hold a port with a stand-in process (a plain listener, or one
answering like a ready Connect worker) and run the same command `make stack-up` runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.stack import ROOT

STACK_PY = ROOT / "devstack" / "stack.py"

# A listener that stays up until killed. "connect" answers like a ready Connect worker
# (both Debezium plugins listed), so `up` would take it as running if it only asked HTTP.
# Extra arguments only show in its command line, as a real server's config path does.
STAND_IN = r"""
import json, socket, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

kind, port = sys.argv[1], int(sys.argv[2])
if kind == "connect":
    class Worker(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps([
                {"class": "io.debezium.connector.postgresql.PostgresConnector",
                 "type": "source", "version": "3.6.1.Final"},
                {"class": "io.debezium.transforms.outbox.EventRouter",
                 "type": "transformation", "version": "3.6.1.Final"},
            ]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", port), Worker)
    print("listening", flush=True)
    server.serve_forever()
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a stopped server's TIME_WAIT
    s.bind(("127.0.0.1", port))
    s.listen()
    print("listening", flush=True)
    while True:
        s.accept()[0].close()
"""

PORT_VARIABLES = {"postgres": "OUTBOX_STACK_PG_PORT", "kafka": "OUTBOX_STACK_KAFKA_PORT",
                  "controller": "OUTBOX_STACK_CONTROLLER_PORT",
                  "connect": "OUTBOX_STACK_CONNECT_PORT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stand:
    """A private stack directory with its own ports, and the commands run on it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.ports = {key: free_port() for key in PORT_VARIABLES}
        self.children: list[subprocess.Popen[str]] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "OUTBOX_STACK_FAST"}
        env["OUTBOX_STACK_DIR"] = str(self.home)
        env.update({var: str(self.ports[key]) for key, var in PORT_VARIABLES.items()})
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(STACK_PY), *args], env=self.env(),
                              capture_output=True, text=True, timeout=120)

    def hold(self, key: str, *argv_extra: str) -> subprocess.Popen[str]:
        """A stand-in process listening on the port of ``key``."""
        kind = "connect" if key == "connect" else "plain"
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN, kind, str(self.ports[key]),
                                 *argv_extra], stdout=subprocess.PIPE, text=True)
        self.children.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def stop(self) -> None:
        for proc in self.children:
            proc.kill()
            proc.wait()


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    s = Stand(tmp_path / "stack")
    try:
        yield s
    finally:
        s.stop()


def assert_refused(done: subprocess.CompletedProcess[str], port: int, pid: int | None,
                   variable: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert f"port {port} answers, but not from this stack's" in line
    if pid is not None:
        assert f"pid {pid} (python" in line
    assert variable in line
    assert "stop that process" in line
    assert "already running" not in done.stdout
    return line


@pytest.mark.parametrize("key", ["postgres", "kafka", "controller", "connect"])
def test_up_refuses_a_port_held_by_a_process_it_did_not_start(stand: Stand, key: str) -> None:
    service = "kafka" if key == "controller" else key
    squatter = stand.hold(key)
    done = stand.run("up", service)
    line = assert_refused(done, stand.ports[key], squatter.pid, PORT_VARIABLES[key])
    assert line.startswith(f"[stack] {service} failed to start: ")
    # Nothing of its own was started or created beside the foreign one.
    assert not (stand.home / "run").exists()
    assert not (stand.home / "postgres").exists()
    assert squatter.poll() is None


def test_up_refuses_a_listener_even_when_its_pidfile_names_another_live_process(
        stand: Stand) -> None:
    """A stale pidfile whose pid was reused by some other live process is not ours either."""
    squatter = stand.hold("connect")
    (stand.home / "run").mkdir(parents=True)
    (stand.home / "run" / "connect.pid").write_text(str(os.getpid()))
    line = assert_refused(stand.run("up", "connect"), stand.ports["connect"], squatter.pid,
                          "OUTBOX_STACK_CONNECT_PORT")
    assert f"names pid {os.getpid()}, which was not started with" in line


def test_status_calls_a_foreign_listener_foreign_not_healthy(stand: Stand) -> None:
    squatter = stand.hold("connect")
    status = stand.run("status")
    assert status.returncode == 1, status.stdout
    (connect,) = [line for line in status.stdout.splitlines() if line.startswith("connect")]
    assert connect.split()[1] == "FOREIGN"
    assert f"pid {squatter.pid}" in connect
    assert "healthy" not in status.stdout


def test_up_accepts_the_worker_named_in_its_own_pidfile(stand: Stand) -> None:
    """`make stack-up` stays idempotent: the process in the pidfile, alive and started on
    this stack's config, is taken as already up (a real worker is started with the same
    argument; tests/test_stack_smoke.py checks the real stack)."""
    config = stand.home / "connect" / "connect-distributed.properties"
    worker = stand.hold("connect", str(config))
    (stand.home / "run").mkdir(parents=True)
    (stand.home / "run" / "connect.pid").write_text(str(worker.pid))
    done = stand.run("up", "connect")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "connect already running" in done.stdout
    status = stand.run("status")
    (connect,) = [line for line in status.stdout.splitlines() if line.startswith("connect")]
    assert connect.split()[1] == "healthy"
    assert f"pid {worker.pid}," in connect


@pytest.mark.slow
def test_a_real_private_postgres_is_accepted_again_and_a_squatter_after_it_is_not() -> None:
    """Through real servers: a second `up` finds its own PostgreSQL (run by the
    unprivileged user when root) already up; once stopped, a squatter on the port is
    refused."""
    home = Path(tempfile.mkdtemp(prefix="outbox-foreign-", dir="/tmp"))
    home.chmod(0o755)  # the unprivileged server must traverse every parent directory
    s = Stand(home)
    try:
        first = s.run("up", "postgres")
        assert first.returncode == 0, first.stdout + first.stderr
        again = s.run("up", "postgres")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "postgres already running" in again.stdout
        status = s.run("status")
        (pg,) = [line for line in status.stdout.splitlines() if line.startswith("postgres")]
        assert pg.split()[1] == "healthy", status.stdout
        assert s.run("down", "postgres").returncode == 0
        squatter = s.hold("postgres")
        assert_refused(s.run("up", "postgres"), s.ports["postgres"], squatter.pid,
                       "OUTBOX_STACK_PG_PORT")
    finally:
        s.stop()
        s.run("down", "postgres")
        shutil.rmtree(home, ignore_errors=True)
