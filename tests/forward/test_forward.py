"""``outbox forward`` against a real local HTTP server, real Kafka and real PostgreSQL."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from consumers.cli import read_dead_letters
from outbox.exit_codes import EXIT_WORKER_DIED
from outbox.settings import Settings
from tests.forward.conftest import Running, event, send, wait_for
from tests.forward.endpoint import Endpoint, Received, Reply

Start = Callable[..., Running]


def route(endpoint: Endpoint, topic: str, **extra: Any) -> dict[str, dict[str, Any]]:
    return {"hook": {"url": endpoint.url, "topics": [topic], "backoff_base": 0.05,
                     "backoff_cap": 0.3, **extra}}


def metric(running: Running, name: str, **labels: str) -> float:
    value = running.forwarder.consumer.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def parked(url: str) -> int:
    """Events in the park table (-1 before the forwarder has created it)."""
    with psycopg.connect(url) as conn:
        try:
            row = conn.execute("select count(*) from forward_parked").fetchone()
        except psycopg.errors.UndefinedTable:
            return -1
        return int(row[0]) if row else 0


def test_delivers_payload_with_idempotency_key_and_toolkit_headers(
        kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint, start_forwarder: Start,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    messages = [event("k1", 1, correlation="corr-1", traceparent=trace), event("k2", 2),
                event("k1", 3, event_type="Other")]
    send(kafka_bootstrap, topic_ready, [m for _, m in messages])
    running = start_forwarder(route(endpoint, topic_ready, event_types=["Thing"], headers={
        "Authorization": "Bearer ${env:HOOK_TOKEN}", "X-Team": "orders"}),
        env={"HOOK_TOKEN": "s3cr3t-token-value"})
    wait_for(lambda: len(endpoint.received) == 2, what="two requests")
    time.sleep(1.0)  # the Other event is not for this route: acknowledged, never posted
    assert running.stop() == 0
    by_key = {r.key: r for r in endpoint.received}
    first = by_key[messages[0][0]]
    assert first.method == "POST" and first.path == "/hook"
    assert first.json == {"eventType": "Thing", "eventId": messages[0][0], "key": "k1", "n": 1}
    assert first.headers["idempotency-key"] == messages[0][0]
    assert first.headers["outbox-event-type"] == "Thing"
    assert first.headers["outbox-correlation-id"] == "corr-1"
    assert first.headers["traceparent"] == trace
    assert first.headers["authorization"] == "Bearer s3cr3t-token-value"
    assert first.headers["x-team"] == "orders"
    assert first.headers["content-type"] == "application/json"
    assert "outbox-correlation-id" not in by_key[messages[1][0]].headers
    assert metric(running, "outbox_forward_requests_total", route="hook",
                  status_class="2xx") == 2
    assert metric(running, "outbox_forward_delivered_total", route="hook") == 2
    assert metric(running, "outbox_forward_request_seconds_count", route="hook") == 2
    assert "s3cr3t-token-value" not in caplog.text


def test_body_template_and_put(kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint,
                               start_forwarder: Start) -> None:
    eid, msg = event("k1", 7, correlation="c-7")
    send(kafka_bootstrap, topic_ready, [msg])
    running = start_forwarder(route(endpoint, topic_ready, method="PUT", body={
        "orderId": "${payload.key}", "n": "${payload.n}", "about": "event ${id} of ${key}",
        "correlationId": "${correlation_id}"}))
    wait_for(lambda: len(endpoint.received) == 1)
    running.stop()
    request = endpoint.received[0]
    assert request.method == "PUT"
    assert request.json == {"orderId": "k1", "n": 7, "about": f"event {eid} of k1",
                            "correlationId": "c-7"}


def test_503_is_retried_until_it_succeeds(kafka_bootstrap: str, topic_ready: str,
                                         endpoint: Endpoint, start_forwarder: Start,
                                         database_url: str) -> None:
    endpoint.script = lambda _r, seen: Reply(503, b"busy") if seen < 2 else Reply()
    eid, msg = event("k1", 1)
    send(kafka_bootstrap, topic_ready, [msg])
    running = start_forwarder(route(endpoint, topic_ready))
    wait_for(lambda: len(endpoint.received) == 3, what="three attempts")
    wait_for(lambda: metric(running, "outbox_forward_delivered_total", route="hook") == 1)
    wait_for(lambda: parked(database_url) == 0, what="park table emptied")
    running.stop()
    assert endpoint.keys() == [eid] * 3
    assert metric(running, "outbox_forward_requests_total", route="hook",
                  status_class="5xx") == 2
    assert metric(running, "outbox_forward_retries_total", route="hook") == 2


def test_retry_after_is_honoured(kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint,
                                 start_forwarder: Start) -> None:
    endpoint.script = lambda _r, seen: (Reply(429, b"slow down", {"Retry-After": "2"})
                                        if seen == 0 else Reply())
    _, msg = event("k1", 1)
    send(kafka_bootstrap, topic_ready, [msg])
    running = start_forwarder(route(endpoint, topic_ready))
    wait_for(lambda: len(endpoint.received) == 2, what="the retry")
    running.stop()
    waited = endpoint.received[1].at - endpoint.received[0].at
    # The backoff alone would retry after 0.025-0.05 s.
    assert 2.0 <= waited < 4.0, waited


def test_400_is_dead_lettered_with_status_and_body_excerpt(
        kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint, start_forwarder: Start,
        database_url: str) -> None:
    rejected, msg = event("k1", 1)
    endpoint.script = lambda r, _seen: (Reply(400, b'{"error": "orderId is required"}')
                                        if r.key == rejected else Reply())
    later, msg2 = event("k1", 2)
    send(kafka_bootstrap, topic_ready, [msg, msg2])
    running = start_forwarder(route(endpoint, topic_ready))
    registry = running.forwarder.consumer.metrics.registry
    for reason in ("template-failed", "retries-exhausted"):  # series at 0 from the start
        assert registry.get_sample_value("outbox_forward_dead_lettered_total",
                                         {"route": "hook", "reason": reason}) == 0.0, reason
    wait_for(lambda: len(endpoint.received) == 2)
    wait_for(lambda: metric(running, "outbox_forward_dead_lettered_total", route="hook",
                            reason="http-rejected") == 1)
    running.stop()
    assert endpoint.keys() == [rejected, later]  # rejected once, and its key moved on
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    [letter] = read_dead_letters(settings, topic_ready + ".dlq", timeout=20)
    assert letter.event_id == rejected
    assert letter.header("dlq.reason") == "http-rejected"
    assert letter.header("dlq.http.status") == "400"
    assert letter.header("dlq.http.response") == '{"error": "orderId is required"}'
    assert float(letter.header("dlq.http.latency.ms")) > 0
    assert letter.header("dlq.forward.route") == "hook"
    assert letter.header("dlq.original.topic") == topic_ready
    assert letter.header("dlq.consumer.group") == running.forwarder.config.group
    assert letter.header("dlq.attempts") == "1"
    assert "HTTP 400" in letter.header("dlq.exception.message")
    assert letter.key == b"k1"


def test_exhausted_retries_are_dead_lettered(kafka_bootstrap: str, topic_ready: str,
                                            endpoint: Endpoint, start_forwarder: Start,
                                            database_url: str) -> None:
    endpoint.script = lambda _r, _seen: Reply(502, b"bad gateway")
    eid, msg = event("k1", 1)
    send(kafka_bootstrap, topic_ready, [msg])
    running = start_forwarder(route(endpoint, topic_ready, max_attempts=3))
    wait_for(lambda: metric(running, "outbox_forward_dead_lettered_total", route="hook",
                            reason="retries-exhausted") == 1)
    running.stop()
    assert endpoint.keys() == [eid] * 3
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    [letter] = read_dead_letters(settings, topic_ready + ".dlq", timeout=20)
    assert (letter.header("dlq.http.status"), letter.header("dlq.attempts")) == ("502", "3")
    assert letter.header("dlq.http.response") == "bad gateway"
    assert parked(database_url) == 0


def test_a_timeout_is_retried(kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint,
                              start_forwarder: Start) -> None:
    endpoint.script = lambda _r, seen: Reply(delay=2.0) if seen == 0 else Reply()
    eid, msg = event("k1", 1)
    send(kafka_bootstrap, topic_ready, [msg])
    running = start_forwarder(route(endpoint, topic_ready, timeout=0.5))
    wait_for(lambda: metric(running, "outbox_forward_delivered_total", route="hook") == 1)
    running.stop()
    assert endpoint.keys() == [eid, eid]
    assert metric(running, "outbox_forward_requests_total", route="hook",
                  status_class="timeout") == 1


def test_server_down_then_up_loses_nothing_and_keeps_key_order(
        kafka_bootstrap: str, topic_ready: str, start_forwarder: Start,
        database_url: str) -> None:
    endpoint = Endpoint()  # not started: connection refused
    messages = [event(f"k{n % 5}", n) for n in range(60)]
    send(kafka_bootstrap, topic_ready, [m for _, m in messages[:30]])
    running = start_forwarder(route(endpoint, topic_ready, max_attempts=1000))
    wait_for(lambda: parked(database_url) == 30, what="30 events parked")
    send(kafka_bootstrap, topic_ready, [m for _, m in messages[30:]])
    wait_for(lambda: parked(database_url) == 60, what="60 events parked")
    assert running.forwarder.health() == (True, "forwarding")
    endpoint.start()
    try:
        wait_for(lambda: {r.key for r in endpoint.received} >= {e for e, _ in messages},
                 timeout=60, what="every event delivered")
        wait_for(lambda: parked(database_url) == 0)
        running.stop()
    finally:
        endpoint.stop()
    per_key: dict[str, list[int]] = defaultdict(list)
    for body in endpoint.bodies():
        per_key[body["key"]].append(body["n"])
    for numbers in per_key.values():
        assert numbers == sorted(numbers)  # delivered once each, in order
    assert sum(len(v) for v in per_key.values()) == 60


def test_a_failing_key_waits_and_other_keys_flow(kafka_bootstrap: str, topic_ready: str,
                                                endpoint: Endpoint, start_forwarder: Start,
                                                database_url: str) -> None:
    stuck_until = time.monotonic() + 4.0

    def script(request: Received, _seen: int) -> Reply:
        if request.json["key"] == "bad" and time.monotonic() < stuck_until:
            return Reply(503, b"key bad is unavailable")
        return Reply()

    endpoint.script = script
    messages = [event("bad" if n % 4 == 0 else f"good{n % 3}", n) for n in range(40)]
    send(kafka_bootstrap, topic_ready, [m for _, m in messages])
    running = start_forwarder(route(endpoint, topic_ready, max_attempts=1000))
    wait_for(lambda: len({b["n"] for b in endpoint.bodies() if b["key"] != "bad"}) == 30,
             timeout=3.5, what="every other key delivered while 'bad' fails")
    posted_bad = [b["n"] for b in endpoint.bodies() if b["key"] == "bad"]
    assert set(posted_bad) == {0}  # only the head of 'bad' was tried; the rest wait
    wait_for(lambda: {b["n"] for b in endpoint.bodies()} == set(range(40)), timeout=30)
    wait_for(lambda: parked(database_url) == 0)
    running.stop()
    delivered_bad = [b["n"] for r, b in zip(endpoint.received, endpoint.bodies(), strict=True)
                     if b["key"] == "bad" and r.at >= stuck_until]
    assert delivered_bad == list(range(0, 40, 4))  # in order, each once after the outage


def test_a_redelivered_event_is_not_posted_twice(kafka_bootstrap: str, topic_ready: str,
                                                endpoint: Endpoint,
                                                start_forwarder: Start) -> None:
    eid = uuid.uuid4()
    _, first = event("k1", 1, event_id=eid)
    send(kafka_bootstrap, topic_ready, [first, first])  # the same event twice in a row
    running = start_forwarder(route(endpoint, topic_ready), group="fwd-redelivery")
    wait_for(lambda: metric(running, "outbox_consumer_duplicates_skipped_total") == 1)
    running.stop()
    # Later the same event once more (a replay, a redrive): the inbox has its id.
    send(kafka_bootstrap, topic_ready, [first, event("k1", 2)[1]])
    again = start_forwarder(route(endpoint, topic_ready), group="fwd-redelivery")
    wait_for(lambda: len(endpoint.received) == 2)
    time.sleep(0.5)
    again.stop()
    assert [b["n"] for b in endpoint.bodies()] == [1, 2]
    assert endpoint.keys()[0] == str(eid)


def test_a_dead_retry_worker_stops_the_forwarder_non_zero(
        kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint, start_forwarder: Start,
        monkeypatch: pytest.MonkeyPatch) -> None:
    running = start_forwarder(route(endpoint, topic_ready), workers=1)
    wait_for(lambda: running.forwarder.consumer.health()[0], what="consumer running")

    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug in the retry worker")

    monkeypatch.setattr(running.forwarder.store, "next_due", broken)
    running.thread.join(30)
    assert running.code == EXIT_WORKER_DIED
    assert running.forwarder.health() == (False, "not running")


def test_database_connections_lost_mid_stream_lose_nothing(
        kafka_bootstrap: str, topic_ready: str, endpoint: Endpoint, start_forwarder: Start,
        database_url: str) -> None:
    """Every connection of the forwarder cut, again and again (as a PostgreSQL restart
    does), while events flow and parked ones are retried: it keeps running."""
    failing_until = time.monotonic() + 3.0
    endpoint.script = lambda r, _seen: (Reply(503) if r.json["key"] == "bad"
                                        and time.monotonic() < failing_until else Reply())
    messages = [event("bad" if n % 5 == 0 else f"k{n % 7}", n) for n in range(300)]
    running = start_forwarder(route(endpoint, topic_ready, max_attempts=1000))
    send(kafka_bootstrap, topic_ready, [m for _, m in messages[:150]])
    cut = 0
    with psycopg.connect(database_url, autocommit=True) as conn:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if cut == 3:
                send(kafka_bootstrap, topic_ready, [m for _, m in messages[150:]])
            cut += 1
            conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where "
                         "datname = current_database() and pid <> pg_backend_pid()")
            time.sleep(0.4)
    wait_for(lambda: {r.key for r in endpoint.received} >= {e for e, _ in messages},
             timeout=60, what="every event delivered after the connections were cut")
    wait_for(lambda: parked(database_url) == 0)
    wait_for(lambda: running.forwarder.health() == (True, "forwarding"), timeout=30)
    assert running.thread.is_alive()
    assert running.stop() == 0
    per_key: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for request in endpoint.received:
        if request.key not in seen and request.json["key"] == "bad":
            seen.add(request.key)
            per_key["bad"].append(request.json["n"])
    assert per_key["bad"] == sorted(per_key["bad"])
