"""The consumer's /health and /metrics endpoint, lag included (real PostgreSQL and Kafka)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from http.server import ThreadingHTTPServer

from sqlalchemy.orm import Session

from consumers import ConsumerOptions, IncomingEvent
from tests.consumers.app import Running, apply_effect, build
from tests.harness.kafka import create_topic, produce


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
