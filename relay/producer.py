"""The relay's Kafka producer: configuration and what a delivery error means."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaError, Producer

from outbox.logs import with_client_logger

# Settings that keep per-key order and make "acknowledged" mean "durable".
# - idempotence + acks=all: no duplicates or reordering from the producer's own retries;
#   librdkafka keeps order with up to 5 requests in flight per partition.
# - murmur2_random: the Java client's (and Debezium's) partitioner, so a key lands on the
#   same partition whoever produced it.
REQUIRED = {
    "enable.idempotence": "true",
    "acks": "all",
    "max.in.flight.requests.per.connection": "5",
    "partitioner": "murmur2_random",
}

# What the toolkit's producers (relay, replay, dead letters, redrive) send by default.
READABLE_COMPRESSION = "none"

# Throughput/latency trade-off; any of these can be overridden with --kafka-config.
TUNING = {
    # 1 ms: a batch forms anyway while earlier requests are in flight; low rates do not
    # wait (p50 commit->ack 17 ms with 5 ms, 10 ms with 1 ms in bench/relay.py).
    "linger.ms": "1",
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

# Errors that say "this record can never be accepted as it is": the row's attempts count,
# and at the limit it is parked (failed_at). Everything else (timeouts, broker down, leader
# moves ...) is an outage: retried with backoff and never counted against the row.
PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.INVALID_RECORD,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError._INVALID_ARG,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.INVALID_REQUIRED_ACKS,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.POLICY_VIOLATION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
})


def producer_config(base: dict[str, str], client_id: str) -> dict[str, str]:
    """The relay's librdkafka configuration: tuning < user's properties < order guarantees."""
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


def is_permanent(error: KafkaError) -> bool:
    """True when retrying the same record cannot help (it counts towards parking the row)."""
    if error.fatal():
        return False  # a fatal producer state is the producer's problem, not the row's
    return error.code() in PERMANENT
