"""Fixtures of the consumer tests: a running consumer with its HTTP endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from consumers import ConsumerOptions
from tests.consumers.app import Running, build
from tests.harness.kafka import create_topic


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
