"""The consumer's /health and /metrics endpoint, lag included (real PostgreSQL and Kafka)."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy.orm import Session

from consumers import ConsumerOptions, IncomingEvent
from consumers.clients import CONSUMER_CLIENT_ID, DEAD_LETTER_CLIENT_ID
from consumers.dlq import REASONS
from outbox.exit_codes import EXIT_CONFIG, EXIT_UNAVAILABLE
from services.launcher import free_port
from tests.consumers.app import Running, apply_effect, build
from tests.harness.kafka import create_topic, produce, unique_topic


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(body: str, name: str) -> float:
    """Sum of a metric's samples in a Prometheus text exposition."""
    total, seen = 0.0, False
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    assert seen, f"{name} not exposed"
    return total


def test_health_is_ok_while_consuming_and_503_after_stop_and_metrics_count_and_lag(
        served: tuple[Running, ThreadingHTTPServer, str], kafka_bootstrap: str,
        topic: str) -> None:
    running, _server, base = served
    produce(kafka_bootstrap, topic, [
        (f"k{n}".encode(), json.dumps({"eventType": "Thing", "n": n}).encode(),
         [("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing")]) for n in range(10)])
    deadline = time.monotonic() + 30
    body = ""
    while time.monotonic() < deadline:
        _, body = get(base + "/metrics")
        if "outbox_consumer_lag{" in body and metric(body, "outbox_consumer_handled_total") == 10:
            break
        time.sleep(0.2)
    assert metric(body, "outbox_consumer_handled_total") == 10
    # Every dead-letter reason is a series from the start, at 0 (an alert on increase()
    # would miss the first dead letter of a series that appears at 1).
    for reason in REASONS:
        assert f'outbox_consumer_dead_lettered_total{{reason="{reason}"}} 0.0' in body, reason
    time.sleep(0.5)  # one more lag measurement after the last commit
    _, body = get(base + "/metrics")
    assert metric(body, "outbox_consumer_lag") == 0  # everything consumed: no lag left

    status, health = get(base + "/health")
    assert status == 200 and json.loads(health)["status"] == "ok"

    running.stop()
    status, health = get(base + "/health")
    assert status == 503 and json.loads(health)["reason"] == "not running"
    assert get(base + "/nope")[0] == 404


def test_lag_shows_a_backlog_while_it_is_worked_off(
        database_url: str, kafka_bootstrap: str, topic: str) -> None:
    """The gauge reads librdkafka's cached high watermarks (no broker round trip in the
    loop), and still shows a backlog as it shrinks to zero."""
    create_topic(kafka_bootstrap, topic, partitions=1)

    def slow(session: Session, event: IncomingEvent) -> None:
        time.sleep(0.1)
        apply_effect(session, event)

    app = build(database_url, kafka_bootstrap, topic, "g-lag", handler=slow,
                options=ConsumerOptions(poll_timeout=0.2, lag_interval=0.05, batch_size=1))
    server = app.serve_metrics(0)
    running = Running(app)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        produce(kafka_bootstrap, topic, [
            (b"k", json.dumps({"eventType": "Thing", "n": n}).encode(),
             [("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing")])
            for n in range(30)])
        seen: list[float] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, body = get(base + "/metrics")
            if "outbox_consumer_lag{" in body:
                seen.append(metric(body, "outbox_consumer_lag"))
                if metric(body, "outbox_consumer_handled_total") == 30 and seen[-1] == 0:
                    break
            time.sleep(0.05)
        assert max(seen) >= 10, seen  # the backlog was visible ...
        assert seen[-1] == 0, seen  # ... and gone once everything was handled
    finally:
        running.stop()
        server.shutdown()


def wait_health(base: str, healthy: bool, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    status, body = get(base + "/health")
    while (status == 200) != healthy:
        assert time.monotonic() < deadline, f"/health still {status} {body}"
        time.sleep(0.2)
        status, body = get(base + "/health")
    info: dict[str, object] = json.loads(body)
    return info


@pytest.mark.slow
def test_health_says_no_broker_is_reachable_while_kafka_is_down_and_recovers(
        database_url: str, private_kafka: Any, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """And librdkafka's own lines about it go through the toolkit's logger, not stderr."""
    bootstrap = f"127.0.0.1:{private_kafka.port}"
    name = unique_topic("health-down")
    create_topic(bootstrap, name, partitions=1)
    app = build(database_url, bootstrap, name, "g-down", options=ConsumerOptions(
        poll_timeout=0.2, stats_interval=0.5,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    server = app.serve_metrics(0)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    caplog.set_level(logging.INFO, logger="outbox.librdkafka")
    running = Running(app)
    try:
        produce(bootstrap, name, [(b"k", b'{"eventType": "Thing", "n": 1}',
                                   [("id", str(uuid.uuid4()).encode())])])
        wait_health(base, True, 60)
        private_kafka.down()
        info = wait_health(base, False, 60)
        assert "no Kafka broker reachable" in str(info["reason"]), info
        assert info["brokers_up"] is False
        private_kafka.up()
        info = wait_health(base, True, 90)
        assert info["reason"] == "consuming"
        produce(bootstrap, name, [(b"k", b'{"eventType": "Thing", "n": 2}',
                                   [("id", str(uuid.uuid4()).encode())])])
        deadline = time.monotonic() + 60
        while app.metrics.handled._value.get() < 2:
            assert time.monotonic() < deadline, "nothing consumed after the broker came back"
            time.sleep(0.2)
    finally:
        running.stop()
        server.shutdown()
    from_librdkafka = [r for r in caplog.records if r.name.startswith("outbox.librdkafka")]
    assert from_librdkafka, "librdkafka's lines did not reach the logger"
    # A raw line looks like "%3|1700000000.123|FAIL|outbox-consumer#consumer-1| ..." (the
    # test's own producers, without a logger, may write some: not the consumer's).
    ours = (CONSUMER_CLIENT_ID + "#", DEAD_LETTER_CLIENT_ID + "#")
    raw = [line for line in capfd.readouterr().err.splitlines()
           if line.startswith("%") and any(name in line for name in ours)]
    assert not raw, raw[:5]
    assert any(CONSUMER_CLIENT_ID in r.getMessage() for r in from_librdkafka)


def test_start_up_checks_fail_fast_with_an_exit_code_and_one_line(
        database_url: str, kafka_bootstrap: str, topic: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """A wrong database password is configuration (3); a broker that does not answer within
    startup_timeout is unavailable (6). Health says 'starting' until the checks pass."""
    wrong = database_url.replace("outbox:outbox@", "outbox:wrong-password@")
    assert wrong != database_url
    options = ConsumerOptions(poll_timeout=0.2, startup_timeout=2)
    app = build(database_url, kafka_bootstrap, topic, "g-start", options=options)
    app.settings = app.settings.model_copy(update={"database_url": wrong})
    caplog.set_level(logging.ERROR, logger="outbox.consumer")
    assert app.run() == EXIT_CONFIG
    [line] = [r.getMessage() for r in caplog.records if r.name == "outbox.consumer"]
    assert "authentication failed" in line and "wrong-password" not in line
    caplog.clear()
    dead = f"127.0.0.1:{free_port()}"
    app = build(database_url, dead, topic, "g-start", options=options)
    started = time.monotonic()
    assert app.run() == EXIT_UNAVAILABLE
    assert time.monotonic() - started < 15
    [line] = [r.getMessage() for r in caplog.records if r.name == "outbox.consumer"]
    assert dead in line and "did not answer" in line
    assert app.health() == (False, "not running")
    caplog.clear()
    typo = replace(options, kafka_config={"session.timeout.msec": "6000"})
    app = build(database_url, kafka_bootstrap, topic, "g-start", options=typo)
    assert app.run() == EXIT_CONFIG
    [line] = [r.getMessage() for r in caplog.records if r.name == "outbox.consumer"]
    assert "session.timeout.msec" in line


def test_the_last_poll_gauge_follows_the_consume_loop(
        served: tuple[Running, ThreadingHTTPServer, str]) -> None:
    _running, _server, base = served
    deadline = time.monotonic() + 30
    while metric(get(base + "/metrics")[1], "outbox_consumer_last_poll_timestamp_seconds") == 0:
        assert time.monotonic() < deadline, "the loop never set the gauge"
        time.sleep(0.2)
    first = metric(get(base + "/metrics")[1], "outbox_consumer_last_poll_timestamp_seconds")
    assert abs(time.time() - first) < 5
    time.sleep(1)  # idle polls move it on too (poll_timeout 0.2 s)
    assert metric(get(base + "/metrics")[1],
                  "outbox_consumer_last_poll_timestamp_seconds") > first
