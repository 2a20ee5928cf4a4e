"""A consumer application for ``outbox worker`` tests: the test effect on
``$OUTBOX_TEST_TOPIC``, of the kind ``$OUTBOX_TEST_HANDLER_KIND``, slowed down by
``$OUTBOX_TEST_HANDLER_SLEEP`` seconds per event (to catch it mid-batch); and ``cli_walk``,
the app of the CLI walks."""

from __future__ import annotations

import os
import time

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.settings import Settings
from tests.consumers.app import build, handler_for


def _slow(event: IncomingEvent) -> None:
    time.sleep(float(os.environ.get("OUTBOX_TEST_HANDLER_SLEEP", "0")))


def app(settings: Settings) -> Consumer:
    """The worker's factory: built from the settings the worker read."""
    return build(settings.database_url, settings.kafka_bootstrap_servers,
                 os.environ["OUTBOX_TEST_TOPIC"], os.environ.get("OUTBOX_TEST_GROUP", "g-worker"),
                 handler=handler_for(os.environ.get("OUTBOX_TEST_HANDLER_KIND", "sync"),
                                     before=_slow),
                 options=ConsumerOptions(poll_timeout=0.2, kafka_config={
                     "session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))


def cli_walk(settings: Settings) -> Consumer:
    """The app the CLI walks run (tests/test_cli_errors.py, test_cli_secrets.py): a topic
    and a group of its own process, so it never joins another test's group."""
    app = Consumer(settings, f"g-cli-walk-{os.getpid()}")
    app.add_handler(f"cli-walk-{os.getpid()}-events", None, _slow)
    return app


not_a_consumer = 42


def _unservable(event: IncomingEvent, mystery) -> None:  # type: ignore[no-untyped-def]
    """A parameter the runtime cannot give: the app's factory fails at registration."""


def bad_handler(settings: Settings) -> Consumer:
    """An app whose handler signature cannot be served (exit 3 at start, one line)."""
    app = Consumer(settings, "g-bad-handler")
    app.add_handler("bad-handler-events", None, _unservable)
    return app
