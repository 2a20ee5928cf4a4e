"""How a legacy step tells the next one, after its own commit. Both ways have the hole the
outbox closes: a crash, an outage or a full queue between the commit and the call loses
the order, and nothing records that a call was owed.

- :class:`FireAndForget` is the seed's ``fetch(url, {...})`` without ``await``: the
  request starts in the background, the function answers at once, errors are ignored
  (counted and logged at debug level, as nobody looked at them).
- :class:`ProduceAfterCommit` is a dual write: produce the step's event to Kafka after
  the commit and wait (up to ``timeout``) for the acknowledgement, as ``await
  producer.send(...)`` would; a failure is raised to the caller, whose commit stands.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from confluent_kafka import KafkaError, Message, Producer

from outbox.logs import with_client_logger
from outbox.record import topic_for
from outbox.settings import Settings
from outbox.uuid7 import uuid7
from services import events as ev
from services.legacy.steps import INVENTORY_STEP, PAYMENT_STEP, SHIPPING_STEP, Next

log = logging.getLogger("outbox.legacy")

# The event a dual-writing step produces for the next step: (aggregate type, event type).
EVENT_FOR = {INVENTORY_STEP: (ev.ORDER, ev.ORDER_CREATED),
             PAYMENT_STEP: (ev.INVENTORY, ev.INVENTORY_RESERVED),
             SHIPPING_STEP: (ev.PAYMENT, ev.PAYMENT_AUTHORIZED)}


class DeliveryError(Exception):
    """The next step could not be told (the broker did not acknowledge in time)."""


class FireAndForget:
    """``fetch(url, {method: 'POST', body})`` with no ``await``: started, never checked."""

    def __init__(self, urls: dict[str, str], workers: int = 16) -> None:
        self.urls = urls
        self.client = httpx.Client(timeout=10)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self.failed = 0
        self._lock = threading.Lock()

    def __call__(self, nxt: Next) -> None:
        self.pool.submit(self._post, nxt)  # the future is dropped, like an un-awaited promise

    def _post(self, nxt: Next) -> None:
        try:
            self.client.post(self.urls[nxt.step], json=nxt.body())
        except httpx.HTTPError as exc:
            with self._lock:
                self.failed += 1
            log.debug("fetch %s for %s failed (ignored): %s", nxt.step, nxt.order_id, exc,
                      extra={"action": "legacy_fetch_failed"})


class ProduceAfterCommit:
    """Commit, then ``producer.send()``: the dual write."""

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self.producer = Producer(with_client_logger({**settings.producer_config(), "acks": "all",
                                  "enable.idempotence": True, "linger.ms": 1,
                                  "partitioner": "murmur2_random",
                                  "message.timeout.ms": str(int(timeout * 1000))}))

    def __call__(self, nxt: Next) -> None:
        aggregate, event_type = EVENT_FOR[nxt.step]
        event_id = str(uuid7())
        value = {"eventType": event_type, "eventId": event_id, "orderId": nxt.order_id,
                 "correlationId": nxt.correlation_id,
                 "occurredAt": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
        errors: list[str] = []
        acknowledged = threading.Event()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())
            acknowledged.set()

        try:
            self.producer.produce(
                topic_for(aggregate, self.settings.topic_template), key=nxt.order_id,
                value=json.dumps(value).encode(), on_delivery=on_delivery,
                headers=[("id", event_id.encode()), ("eventType", event_type.encode())])
        except BufferError as exc:
            raise DeliveryError(f"{event_type} for {nxt.order_id}: {exc}") from None
        # Each request thread waits for its own message (poll serves any thread's callbacks).
        deadline = time.monotonic() + self.timeout + 1
        while not acknowledged.is_set() and time.monotonic() < deadline:
            self.producer.poll(0.05)
        if not acknowledged.is_set() or errors:
            raise DeliveryError(f"{event_type} for {nxt.order_id} not acknowledged: "
                                f"{errors[0] if errors else 'timeout'}")

    def close(self) -> None:
        """Send what is queued (up to ``timeout``)."""
        self.producer.flush(self.timeout)
