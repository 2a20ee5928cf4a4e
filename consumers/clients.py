"""The consumer's librdkafka clients: how they are configured, and the lag they report.

Both clients log through the toolkit's logger (:func:`outbox.logs.with_client_logger`),
and the consumer reports errors and statistics to :class:`~consumers.health.ConsumerHealth`.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, Producer

from consumers.dlq_writer import DELIVERY_TIMEOUT_MS
from consumers.health import ConsumerHealth
from consumers.metrics import ConsumerMetrics
from consumers.options import ConsumerOptions, static_member_id
from outbox.kafka import ordered_producer
from outbox.logs import with_client_logger
from outbox.settings import Settings

log = logging.getLogger("outbox.consumer")

# What the broker sees (and librdkafka's log lines name: "outbox-consumer#consumer-1")
CONSUMER_CLIENT_ID = "outbox-consumer"
DEAD_LETTER_CLIENT_ID = "outbox-dead-letters"
# librdkafka's own ceiling for a producer's message.max.bytes
_PRODUCER_MAX_BYTES = 1_000_000_000


def consumer_config(settings: Settings, options: ConsumerOptions, group: str,
                    topics: list[str], health: ConsumerHealth) -> dict[str, Any]:
    """The Kafka consumer's properties: manual offsets, cooperative rebalancing."""
    return with_client_logger({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": CONSUMER_CLIENT_ID,
        **settings.kafka_config,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "partition.assignment.strategy": "cooperative-sticky",
        "statistics.interval.ms": int(options.stats_interval * 1000),
        **({"group.instance.id": static_member_id(options.instance_id, topics)}
           if options.instance_id else {}),
        **options.kafka_config,
        # /health reads these; a user's own callbacks would blind it
        "error_cb": health.on_error, "stats_cb": health.on_stats,
    })


def dead_letter_producer(settings: Settings, options: ConsumerOptions) -> Producer:
    """The producer of dead letters: it takes whatever the consumer accepts, and answers
    each delivery within DELIVERY_TIMEOUT_MS."""
    room = min(_PRODUCER_MAX_BYTES, max(1_000_000, options.max_message_bytes + (1 << 20)))
    return ordered_producer(settings, {"linger.ms": 1, "message.max.bytes": room,
                                       "message.timeout.ms": DELIVERY_TIMEOUT_MS},
                            defaults={"client.id": DEAD_LETTER_CLIENT_ID})


def measure_lag(kafka: KafkaConsumer, metrics: ConsumerMetrics) -> None:
    """Feed the lag gauge: high watermark minus our position, per assigned partition."""
    try:
        assigned = kafka.assignment()
        for tp in kafka.position(assigned) if assigned else []:
            # The high watermark librdkafka keeps from fetch responses: asking the broker
            # instead costs a round trip per partition, in the consume loop, stalling every
            # hop of a saga each lag_interval (bench/saga.py: p99 +100-300 ms every 5 s).
            _low, high = kafka.get_watermark_offsets(tp, cached=True)
            # Position is negative (OFFSET_INVALID) before the first fetch: no lag known.
            if tp.offset >= 0:
                metrics.lag.labels(tp.topic, str(tp.partition)).set(max(high - tp.offset, 0))
    except KafkaException as exc:
        # Lag is for the dashboard; a broker hiccup must not disturb consuming.
        log.debug("lag measurement failed: %s", exc, extra={"action": "lag_failed"})
