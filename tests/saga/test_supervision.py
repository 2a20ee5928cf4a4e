"""Every saga process is supervised: a dead worker thread stops it with a non-zero exit
code, start-up problems fail at once in one line, and each process has a /health."""

from __future__ import annotations

import subprocess
import time

import httpx
import psycopg
import pytest

from outbox.exit_codes import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_WORKER_DIED
from services.launcher import SagaProcesses, free_port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy after {timeout:.0f}s"
        time.sleep(0.3)


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout:.0f}s") from None


def log_of(saga: SagaProcesses, name: str) -> str:
    return (saga.log_dir / f"{name}.log").read_text(errors="replace")


def test_order_api_stops_with_worker_died_when_its_consumer_dies(
        saga_env: SagaProcesses) -> None:
    """A second order API with the same consumer instance id fences the first one's
    consumer (a fatal Kafka error): the first process must not go on answering 202."""
    saga_env.start("order-api")
    first = saga_env.procs["order-api"]
    wait_healthy(saga_env.api + "/health", first)
    twin = SagaProcesses(env=saga_env.env, log_dir=saga_env.log_dir / "twin",
                         instance_tag=saga_env.instance_tag)
    twin.start("order-api")
    try:
        assert wait_exit(first, 90) == EXIT_WORKER_DIED, log_of(saga_env, "order-api")[-3000:]
        log = log_of(saga_env, "order-api")
        assert "order-consumer" in log and "Traceback" not in log
    finally:
        twin.stop_all()


def test_relay_stops_with_worker_died_when_one_of_its_relays_dies(
        saga_env: SagaProcesses, database_url: str) -> None:
    saga_env.start("relay")
    relay = saga_env.procs["relay"]
    health = f"http://127.0.0.1:{saga_env.metrics_ports['relay']}/health"
    wait_healthy(health, relay)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("set lock_timeout = '20s'")
        conn.execute("drop table shipping.outbox cascade")
    assert wait_exit(relay, 90) == EXIT_WORKER_DIED, log_of(saga_env, "relay")[-3000:]
    assert "relay-shipping" in log_of(saga_env, "relay")


@pytest.mark.parametrize("service", ["inventory", "relay"])
def test_metrics_host_chooses_the_address_of_health(saga_env: SagaProcesses,
                                                    service: str) -> None:
    """--metrics-host (here through OUTBOX_METRICS_HOST): 0.0.0.0 in a container."""
    saga_env.env["OUTBOX_METRICS_HOST"] = "127.0.0.2"
    saga_env.start(service)
    wait_healthy(f"http://127.0.0.2:{saga_env.metrics_ports[service]}/health",
                 saga_env.procs[service], timeout=90)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{saga_env.metrics_ports[service]}/health", timeout=2)


def test_relay_refuses_to_start_when_an_outbox_is_missing(
        saga_env: SagaProcesses, database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("drop table payment.outbox cascade")
    saga_env.start("relay")
    assert wait_exit(saga_env.procs["relay"], 60) == EXIT_CONFIG
    log = log_of(saga_env, "relay")
    assert "payment" in log and "outbox db upgrade" in log and "Traceback" not in log


@pytest.mark.parametrize("service", ["inventory", "order-api", "relay"])
def test_a_wrong_database_password_fails_at_start(saga_env: SagaProcesses,
                                                   database_url: str, service: str) -> None:
    saga_env.env["OUTBOX_DATABASE_URL"] = database_url.replace("outbox:outbox@",
                                                               "outbox:not-the-password@")
    saga_env.start(service)
    assert wait_exit(saga_env.procs[service], 60) == EXIT_CONFIG
    log = log_of(saga_env, service)
    assert "authentication failed" in log
    assert "not-the-password" not in log and "Traceback" not in log


@pytest.mark.parametrize("service", ["payment", "relay"])
def test_an_unreachable_broker_fails_at_start_within_the_bound(
        saga_env: SagaProcesses, service: str) -> None:
    saga_env.env["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    saga_env.start(service)
    assert wait_exit(saga_env.procs[service], 60) == EXIT_UNAVAILABLE
    assert time.monotonic() - started < 40
    log = log_of(saga_env, service)
    assert "did not answer" in log and "Traceback" not in log
