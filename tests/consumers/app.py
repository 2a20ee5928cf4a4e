"""A small consumer application used by the tests (in a thread, or as a subprocess).

Its effect: one row in ``effects`` per event applied, plus an outbox event — so a double
effect shows up as two rows, and a rolled-back handler leaves neither.

    python -m tests.consumers.app DATABASE_URL BOOTSTRAP TOPIC GROUP [INSTANCE_ID [SESSION_MS]]
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.publish import Event, publish
from outbox.settings import Settings

CREATE_EFFECTS = "create table if not exists effects (event_id uuid, n int, payload jsonb)"


def sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def prepare(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(CREATE_EFFECTS))


def apply_effect(session: Session, event: IncomingEvent) -> None:
    session.execute(text("insert into effects (event_id, n, payload) values (:id, :n, "
                         "cast(:p as jsonb))"),
                    {"id": event.id, "n": event.payload.get("n"),
                     "p": __import__("json").dumps(dict(event.payload))})
    publish(session, Event("effect", str(event.key), "EffectApplied",
                           {"of": str(event.id)}, causation_id=str(event.id)))


def build(database_url: str, bootstrap: str, topic: str, group: str,
          handler: Callable[[Session, IncomingEvent], None] = apply_effect,
          options: ConsumerOptions | None = None, fallback: bool = False) -> Consumer:
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=bootstrap)
    engine = create_engine(sa_url(database_url), pool_size=2)
    prepare(engine)
    app = Consumer(settings, group, engine=engine, options=options or ConsumerOptions(
        backoff_base=0.05, backoff_cap=0.2, poll_timeout=0.2,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    app.add_handler(topic, "Thing", handler)
    if fallback:
        app.add_handler(topic, None, handler)
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
    consumer = build(url, boot, topic_name, group_name, options=static)
    consumer.install_signal_handlers()
    sys.exit(consumer.run())
