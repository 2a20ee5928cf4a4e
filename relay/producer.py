"""The relay's Kafka producer: what a delivery error means. Its configuration is
outbox.kafka's (re-exported here)."""

from __future__ import annotations

from confluent_kafka import KafkaError

from outbox.kafka import READABLE_COMPRESSION, REQUIRED, TUNING, make_producer, producer_config

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


def is_permanent(error: KafkaError) -> bool:
    """True when retrying the same record cannot help (it counts towards parking the row)."""
    if error.fatal():
        return False  # a fatal producer state is the producer's problem, not the row's
    return error.code() in PERMANENT


__all__ = ["PERMANENT", "READABLE_COMPRESSION", "REQUIRED", "TUNING", "is_permanent",
           "make_producer", "producer_config"]
