"""A topic template that would send every event to a topic Kafka refuses is a configuration
error when the settings are read (exit 3 at start), not a relay parking every row."""

from __future__ import annotations

import os
import subprocess

import pytest

from outbox.errors import ConfigurationError
from outbox.exit_codes import EXIT_CONFIG
from outbox.settings import load_settings
from tests.test_cli_errors import COMMAND


@pytest.mark.parametrize("template", ["{aggregate_type}-events", "{aggregatetype",
                                      "bad topic {aggregatetype}", "", "..",
                                      "{aggregatetype}-" + "x" * 244, "é-{aggregatetype}"])
def test_templates_that_make_refused_topic_names_are_refused(template: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(topic_template=template)
    message = str(caught.value)
    assert message.startswith("invalid OUTBOX_TOPIC_TEMPLATE / --topic-template: ")
    assert "write the placeholder as {aggregatetype}" in message


@pytest.mark.parametrize("template", ["{aggregatetype}-events", "shop.{aggregatetype}.events",
                                      "all-events", "{aggregatetype}", "a_{aggregatetype}-1"])
def test_templates_kafka_accepts_are_kept(template: str) -> None:
    assert load_settings(topic_template=template).topic_template == template


def test_the_relay_refuses_one_at_start_with_one_line() -> None:
    result = subprocess.run([*COMMAND, "relay", "run", "--topic-template",
                             "{aggregate_type}-events"], capture_output=True, text=True,
                            timeout=60, env={**os.environ,
                                             "OUTBOX_DATABASE_URL": "postgresql://u@h/db"})
    assert result.returncode == EXIT_CONFIG, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "'{aggregate_type}-events' makes topic names" in lines[0]
