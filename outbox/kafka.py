"""Kafka client configuration: the one place the toolkit's librdkafka clients are set up.

Every client takes the user's properties (``OUTBOX_KAFKA_CONFIG`` / ``--kafka-config``,
:meth:`outbox.settings.Settings.producer_config`) and logs through the toolkit's logger
(:func:`outbox.logs.with_client_logger`). Producers of events also keep per-key order and
the Java clients' partitioning (:data:`ORDERING`), whatever the user's properties say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Producer

from outbox.logs import with_client_logger
from outbox.settings import Settings

# What every producer of the toolkit's records keeps, whatever the user's properties say:
# - idempotence + acks=all: no duplicates or reordering from the producer's own retries
#   ("acknowledged" means durable);
# - murmur2_random: the Java client's (and Debezium's) partitioner, so a key lands on the
#   same partition whoever produced it.
ORDERING: dict[str, str] = {
    "enable.idempotence": "true",
    "acks": "all",
    "partitioner": "murmur2_random",
}

# The relay's: ORDERING, and librdkafka keeps order with up to 5 requests in flight per
# partition.
REQUIRED: dict[str, str] = {
    **ORDERING,
    "max.in.flight.requests.per.connection": "5",
}

# What the toolkit's producers (relay, replay, dead letters, redrive) send by default.
READABLE_COMPRESSION = "none"

# The relay's throughput/latency trade-off; any of these can be overridden with
# --kafka-config.
TUNING: dict[str, str] = {
    # 0: a record goes out at once; under a backlog batches form anyway while earlier
    # requests are in flight. bench/relay.py at 1,000 events/s, commit -> ack p50/p99:
    # 4.7 / 12.7 ms with 1 ms, 1.0 / 7.5 ms with 0; throughput the same within the noise
    # (200 B: 52-61k events/s with 0, 59-61k with 1; docs/benchmarks.md).
    "linger.ms": "0",
    "batch.size": "1000000",
    "batch.num.messages": "10000",
    "queue.buffering.max.messages": "500000",
    # Uncompressed: what every mainstream client reads with its defaults (KafkaJS decodes
    # only none and gzip without codec plugins; lz4 made the seed's consumers crash with
    # KafkaJSNotImplemented). gzip was measured and rejected as the default: ~54k events/s
    # for one producer thread against ~320k uncompressed (and lz4 ~150k), a ceiling below
    # the relay's own throughput, for 3.2x fewer bytes on disk. Opt in with
    # --kafka-config compression.type=lz4|zstd|gzip (docs/publishing.md, "Compression").
    "compression.type": READABLE_COMPRESSION,
    # Undelivered messages fail after this, so a Kafka outage turns into retriable
    # delivery errors the relay backs off from, instead of an unbounded wait.
    "message.timeout.ms": "30000",
    "socket.keepalive.enable": "true",
    # Small produce requests must not wait for delayed ACKs (Nagle): latency, not bytes.
    "socket.nagle.disable": "true",
}


def client_config(settings: Settings, fixed: Mapping[str, Any] | None = None,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A client's properties: ``defaults`` < the user's (with the bootstrap servers) <
    ``fixed``, logging through the toolkit's logger."""
    return with_client_logger({**(defaults or {}), **settings.producer_config(),
                               **(fixed or {})})


def ordered_producer(settings: Settings, fixed: Mapping[str, Any] | None = None,
                     defaults: Mapping[str, Any] | None = None) -> Producer:
    """A producer of the toolkit's records (replay, dead letters, redrive): the user's
    properties, then :data:`ORDERING` and ``fixed``."""
    return Producer(client_config(settings, {**ORDERING, **(fixed or {})}, defaults))


def _same(key: str, value: object, kept: str) -> bool:
    text = str(value).strip().lower()
    if key in ("acks", "request.required.acks"):
        return text in ("all", "-1") and kept in ("all", "-1")
    return text == kept.lower()


def replaced(user: Mapping[str, object], kept: Mapping[str, str] = REQUIRED) -> list[str]:
    """The user's properties that ``kept`` replaces with another value, each as
    ``key=value -> kept value`` (``acks=-1`` is ``acks=all``): what the relay does not use
    of ``--kafka-config``, to say so at start rather than ignore it silently."""
    return [f"{key}={user[key]} -> {value}" for key, value in kept.items()
            if key in user and not _same(key, user[key], value)]


def producer_config(base: dict[str, str], client_id: str) -> dict[str, str]:
    """The relay's librdkafka configuration: tuning < user's properties (``base``) < order
    guarantees."""
    config = {**TUNING, "client.id": client_id, **base}
    config.update(REQUIRED)
    return config


def make_producer(config: dict[str, str],
                  error_cb: Callable[[KafkaError], None] | None = None) -> Producer:
    """A confluent-kafka producer for ``config`` (see :func:`producer_config`).

    ``error_cb`` receives client-level errors (all brokers down, authentication ...);
    librdkafka's own log goes through the toolkit's logger (``outbox.librdkafka``).
    """
    full: dict[str, object] = with_client_logger(dict(config))
    if error_cb is not None:
        full["error_cb"] = error_cb
    return Producer(full)
