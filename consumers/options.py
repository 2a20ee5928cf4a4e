"""How a consumer runs: :class:`ConsumerOptions`, and its static member id."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

# Anything a broker with its default limits accepts (message.max.bytes 1,048,588 for the
# whole record batch) passes; raise it together with the topic's max.message.bytes.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass
class ConsumerOptions:
    """Tuning; every field has a sensible default."""

    max_attempts: int = 5
    batch_size: int = 200
    poll_timeout: float = 0.5
    dedupe: bool = True
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    shutdown_timeout: float = 30.0
    lag_interval: float = 5.0  # seconds between lag measurements (cached watermarks)
    stall_after: float = 60.0  # /health turns 503 when the loop has not turned for this long
    # A message whose key, value and headers add up to more bytes is dead-lettered
    # (reason too-large, truncated) without being decoded.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Seconds between librdkafka's statistics, which tell /health whether a broker is up.
    stats_interval: float = 5.0
    # Bound of each start-up check (database, then broker) before the consumer subscribes;
    # 0 skips them.
    startup_timeout: float = 10.0
    # A stable id of this instance (Kafka static membership, ``group.instance.id``): after a
    # crash, the instance restarted with the same id takes its partitions back at once
    # instead of after session.timeout.ms. Two live processes must never share one (the
    # later fences the earlier, which then exits with EXIT_FENCED). Each id must be unique
    # in the group, e.g. a StatefulSet pod name. See static_member_id for the suffix.
    instance_id: str | None = None
    kafka_config: dict[str, str] = field(default_factory=dict)


def static_member_id(instance_id: str, topics: list[str]) -> str:
    """``group.instance.id`` for ``instance_id`` subscribed to ``topics``: the id with a
    short hash of the topics. Kafka hands a static member that comes back its previous
    assignment without a rebalance; one that came back subscribed to other topics would
    never be given them (measured: a new topic not consumed after 90 s). A new set of
    topics is a new member instead, which joins with a rebalance."""
    digest = zlib.crc32(",".join(sorted(topics)).encode()) & 0xFFFFFF
    return f"{instance_id}.{digest:06x}"
