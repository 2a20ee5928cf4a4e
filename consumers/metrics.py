"""Prometheus metrics of one consumer (a registry of its own: tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumers.dlq import REASONS

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class ConsumerMetrics:
    """Handled, duplicates skipped, retries, dead-lettered, handler latency, lag."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.handled = Counter("outbox_consumer_handled", "Events applied by a handler",
                               registry=r)
        self.duplicates = Counter("outbox_consumer_duplicates_skipped",
                                  "Events skipped because the inbox already held their id",
                                  registry=r)
        self.retries = Counter("outbox_consumer_retries", "Handler failures that were retried",
                               registry=r)
        self.dead_lettered = Counter("outbox_consumer_dead_lettered",
                                     "Messages sent to a dead-letter topic, by reason",
                                     ["reason"], registry=r)
        for reason in REASONS:  # at 0 from the start: increase() sees the first one
            self.dead_lettered.labels(reason=reason)
        self.handler_seconds = Histogram("outbox_consumer_handler_seconds",
                                         "Time in one handler (inside its savepoint)",
                                         buckets=BUCKETS, registry=r)
        self.batch_seconds = Histogram("outbox_consumer_batch_seconds",
                                       "Time to apply and commit one batch",
                                       buckets=BUCKETS, registry=r)
        self.lag = Gauge("outbox_consumer_lag", "Messages behind the high watermark",
                         ["topic", "partition"], registry=r)
        # Set by the consume loop each time it polls Kafka (0 until then): its age tells a
        # consumer whose loop stopped turning from a quiet one, while /metrics still answers.
        self.last_poll = Gauge("outbox_consumer_last_poll_timestamp_seconds",
                               "Unix time the consume loop last polled Kafka (0: not yet)",
                               registry=r)
