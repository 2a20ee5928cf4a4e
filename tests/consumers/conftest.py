"""Fixtures of the consumer tests: a running consumer with its HTTP endpoint."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from consumers import ConsumerOptions
from services.launcher import free_port
from tests.consumers.app import KINDS, Running, build
from tests.harness.kafka import create_topic
from tests.harness.stack import service_missing
from tests.test_compose import load_stack_module


@pytest.fixture
def topic_ready(kafka_bootstrap: str, topic: str) -> str:
    """``topic``, created with 2 partitions."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    return topic


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The handler kind a contract test runs with: ``sync`` (Session) or ``async``
    (AsyncSession on the async engine)."""
    return str(request.param)


@pytest.fixture
def served(database_url: str, kafka_bootstrap: str,
           topic: str) -> Iterator[tuple[Running, ThreadingHTTPServer, str]]:
    """A consumer of ``topic`` (2 partitions) in a thread, serving /metrics and /health."""
    create_topic(kafka_bootstrap, topic, partitions=2)
    app = build(database_url, kafka_bootstrap, topic, "g-health", options=ConsumerOptions(
        poll_timeout=0.2, lag_interval=0.2,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    server = app.serve_metrics(0)
    running = Running(app)
    try:
        yield running, server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if running.thread.is_alive():
            running.stop()
        server.shutdown()


@pytest.fixture
def private_kafka() -> Iterator[Any]:
    """A single-node Kafka of this test's own (ports, data directory), so that it can be
    stopped without touching the shared broker."""
    os.environ.setdefault("OUTBOX_STACK_KAFKA_HEAP", "384m")  # read when the module loads
    stack = load_stack_module()
    broker = stack.Kafka(port=free_port(), controller_port=free_port(),
                         name=f"kafka-consumer-health-{os.getpid()}")
    try:
        broker.up()
    except Exception as exc:  # no jars / no java: cannot run a private broker here
        service_missing("a private Kafka broker", str(exc))  # fails in CI
    try:
        yield broker
    finally:
        broker.down()
        shutil.rmtree(broker.home, ignore_errors=True)
