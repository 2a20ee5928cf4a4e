"""Fixtures of the saga tests: a prepared database and private topics, nothing started."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from outbox.settings import Settings
from services.launcher import SagaProcesses
from services.runtime import prepare_database
from tests.harness.kafka import create_topic

AGGREGATES = ("order", "inventory", "payment", "shipping")


@pytest.fixture
def saga_env(database_url: str, kafka_bootstrap: str, topic: str,
             tmp_path: Path) -> Iterator[SagaProcesses]:
    """The saga's schemas and topics ready; start the processes a test needs with
    ``start(name)``. Whatever is still running at the end is stopped."""
    template = topic + "-{aggregatetype}-events"
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=template)
    for aggregate in AGGREGATES:
        create_topic(kafka_bootstrap, template.replace("{aggregatetype}", aggregate), 3)
    prepare_database(settings)
    procs = SagaProcesses(env={"OUTBOX_DATABASE_URL": database_url,
                               "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                               "OUTBOX_TOPIC_TEMPLATE": template},
                          log_dir=tmp_path / "logs", instance_tag=topic[-8:])
    try:
        yield procs
    finally:
        procs.stop_all()
