"""The toolkit's daemons in a thread of the test: a relay for the length of a block, a
consumer until a condition holds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine

from consumers import Consumer, ConsumerOptions
from outbox.settings import Settings
from relay.loop import Relay, RelayOptions


@contextmanager
def relay_thread(settings: Settings, poll_interval: float = 0.2) -> Iterator[Relay]:
    """A relay running in a thread while the block runs; stopped (and joined) after it."""
    relay = Relay(settings, RelayOptions(poll_interval=poll_interval))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.request_stop()
        thread.join(30)


def consume_until(settings: Settings, group: str, topic: str, event_type: str,
                  handle: Callable[..., Any], done: Callable[[Consumer], bool],
                  timeout: float = 60) -> None:
    """Run a consumer of ``topic`` in group ``group`` (``handle`` for ``event_type``) in a
    thread until ``done(consumer)`` or ``timeout`` seconds, then stop it and dispose of its
    engine."""
    engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
    app = Consumer(settings, group, engine=engine, options=ConsumerOptions(poll_timeout=0.1))
    app.add_handler(topic, event_type, handle)
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done(app) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        app.request_stop()
        thread.join(30)
        engine.dispose()
