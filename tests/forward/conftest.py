"""Fixtures of the forwarder tests: a local endpoint, a topic, a forwarder in a thread."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from consumers.forward import Forwarder
from consumers.forward_config import build_config
from consumers.runtime import ConsumerOptions
from outbox.settings import Settings
from tests.forward.endpoint import Endpoint
from tests.harness.kafka import Header, create_topic, produce

Msg = tuple[bytes | None, bytes | None, list[Header]]
FAST = ConsumerOptions(backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
                       kafka_config={"session.timeout.ms": "6000",
                                     "heartbeat.interval.ms": "500"})


def event(key: str, n: int, event_type: str = "Thing", event_id: uuid.UUID | None = None,
          correlation: str | None = None, traceparent: str | None = None) -> tuple[str, Msg]:
    """(event id, a record in the toolkit's format) with payload {n, key}."""
    eid = str(event_id or uuid.uuid4())
    headers: list[Header] = [("id", eid.encode()), ("eventType", event_type.encode())]
    if correlation:
        headers.append(("correlationId", correlation.encode()))
    if traceparent:
        headers.append(("traceparent", traceparent.encode()))
    value = json.dumps({"eventType": event_type, "eventId": eid, "key": key, "n": n})
    return eid, (key.encode(), value.encode(), headers)


class Running:
    """A forwarder in a thread; ``stop()`` drains it and returns its exit code."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.forwarder.run()

    def stop(self) -> int | None:
        self.forwarder.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "forwarder did not stop"
        return self.code


@pytest.fixture
def topic_ready(kafka_bootstrap: str, topic: str) -> str:
    create_topic(kafka_bootstrap, topic, partitions=2)
    return topic


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_forwarder(database_url: str, kafka_bootstrap: str
                    ) -> Iterator[Callable[..., Running]]:
    """``start(routes={name: route}, **config)``: a forwarder on the test's database."""
    running: list[Running] = []

    def start(routes: dict[str, dict[str, Any]], env: dict[str, str] | None = None,
              **config: Any) -> Running:
        settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
        cfg = build_config({"group": f"fwd-{uuid.uuid4().hex[:8]}", **config,
                            "routes": routes}, "test", env or {})
        handle = Running(Forwarder(settings, cfg, options=FAST, poll_interval=0.1))
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if handle.thread.is_alive():
            handle.stop()


def send(bootstrap: str, topic: str, messages: list[Msg]) -> None:
    produce(bootstrap, topic, messages)


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:.0f}s")
