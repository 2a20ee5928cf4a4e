"""A small consumer application used by the tests (in a thread, or as a subprocess).

Its effect: one row in ``effects`` per event applied, plus an outbox event — so a double
effect shows up as two rows, and a rolled-back handler leaves neither. The same effect
exists as a sync handler (``Session``) and an async one (``AsyncSession``, awaited on the
async engine): ``kind`` picks one, so the contract suite runs every guarantee for both.

    OUTBOX_TEST_HANDLER_KIND=async python -m tests.consumers.app DATABASE_URL BOOTSTRAP \
        TOPIC GROUP [INSTANCE_ID [SESSION_MS]]
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.publish import Event, publish, publish_async
from outbox.settings import Settings

CREATE_EFFECTS = "create table if not exists effects (event_id uuid, n int, payload jsonb)"
INSERT_EFFECT = text("insert into effects (event_id, n, payload) values (:id, :n, "
                     "cast(:p as jsonb))")
KINDS = ("sync", "async")

# A test's own behaviour around the effect: may raise, or return SQL to run first.
Hook = Callable[[IncomingEvent], str | None]


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def prepare(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(CREATE_EFFECTS))


def _effect(event: IncomingEvent) -> tuple[dict[str, Any], Event]:
    row = {"id": event.id, "n": event.payload.get("n"), "p": json.dumps(dict(event.payload))}
    return row, Event("effect", str(event.key), "EffectApplied", {"of": str(event.id)},
                      causation_id=str(event.id))


def apply_effect(session: Session, event: IncomingEvent) -> None:
    row, effect = _effect(event)
    session.execute(INSERT_EFFECT, row)
    publish(session, effect)


async def apply_effect_async(session: AsyncSession, event: IncomingEvent) -> None:
    row, effect = _effect(event)
    await session.execute(INSERT_EFFECT, row)
    await publish_async(session, effect)


def handler_for(kind: str, before: Hook | None = None,
                after: Hook | None = None) -> Callable[..., Any]:
    """The effect as a ``kind`` handler, with ``before``/``after`` hooks around it."""
    if kind == "sync":
        def handle(session: Session, event: IncomingEvent) -> None:
            if before is not None and (sql := before(event)):
                session.execute(text(sql))
            apply_effect(session, event)
            if after is not None:
                after(event)

        return handle
    if kind != "async":
        raise ValueError(f"handler kind {kind!r} is not one of {KINDS}")

    async def handle_async(session: AsyncSession, event: IncomingEvent) -> None:
        if before is not None and (sql := before(event)):
            await session.execute(text(sql))
        await apply_effect_async(session, event)
        if after is not None:
            after(event)

    return handle_async


def build(database_url: str, bootstrap: str, topic: str, group: str,
          handler: Callable[..., Any] | None = None,
          options: ConsumerOptions | None = None, fallback: bool = False,
          kind: str = "sync") -> Consumer:
    """A consumer of ``topic`` whose ``Thing`` handler is ``handler`` or the ``kind`` effect."""
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=bootstrap)
    engine = create_engine(sa_url(database_url), pool_size=2)
    prepare(engine)
    app = Consumer(settings, group, engine=engine, options=options or ConsumerOptions(
        backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    handle = handler if handler is not None else handler_for(kind)
    app.add_handler(topic, "Thing", handle)
    if fallback:
        app.add_handler(topic, None, handle)
    return app


class Running:
    """A consumer running in a thread; ``stop()`` drains it."""

    def __init__(self, app: Consumer) -> None:
        self.app = app
        self.thread = threading.Thread(target=app.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.app.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "consumer did not stop"


if __name__ == "__main__":
    url, boot, topic_name, group_name = sys.argv[1:5]
    # An optional fifth argument: a static group member with this instance id, whose crash
    # the group would otherwise only notice after a long session timeout (60 s, or the
    # sixth argument in ms).
    static = ConsumerOptions(
        backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2, instance_id=sys.argv[5],
        kafka_config={"session.timeout.ms": sys.argv[6] if len(sys.argv) > 6 else "60000",
                      "heartbeat.interval.ms": "1000"}
    ) if len(sys.argv) > 5 else None
    consumer = build(url, boot, topic_name, group_name, options=static,
                     kind=os.environ.get("OUTBOX_TEST_HANDLER_KIND", "sync"))
    consumer.install_signal_handlers()
    sys.exit(consumer.run())
