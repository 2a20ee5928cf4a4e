"""Prometheus metrics and the ``/health`` endpoint of one relay process."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily, Metric

from outbox import http

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 300)


class HotHistogram:
    """A Prometheus histogram for one thread's hot path.

    ``prometheus_client.Histogram.observe`` takes a lock and updates every bucket's value
    object (~2 µs); the relay observes every delivered record, from the loop thread only,
    a batch at a time (:meth:`observe_ages`), so plain integers do. Scrapes copy the
    counts (a scrape may miss the observation being made, never show an inconsistent
    histogram).
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.upper = [float(b) for b in buckets]
        self.counts = [0] * (len(self.upper) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one value (seconds)."""
        self.counts[bisect_left(self.upper, value)] += 1
        self.sum += value

    def observe_ages(self, now: float, created_ms: list[int]) -> None:
        """Count ``now - created`` (seconds, at least 0) for each epoch-millisecond
        timestamp: one ``bisect`` per bucket for the whole list, not one per value."""
        if not created_ms:
            return
        stamps = sorted(created_ms)  # nearly sorted already (seq order): linear
        now_ms = now * 1000.0
        counted = 0
        # Ages at most upper[i] are the timestamps at or after now - upper[i], read from the
        # newest (smallest age) bucket to the oldest.
        for i, upper in enumerate(self.upper):
            within = len(stamps) - bisect_left(stamps, now_ms - upper * 1000.0)
            self.counts[i] += within - counted
            counted = within
        self.counts[-1] += len(stamps) - counted
        # (float rounding over epoch milliseconds: within a millisecond per batch)
        self.sum += max(0.0, (len(stamps) * now_ms - sum(stamps)) / 1000.0)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        counts, total_sum = list(self.counts), self.sum
        cumulative, buckets = 0, []
        for upper, count in zip([*self.upper, float("inf")], counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if upper == float("inf") else repr(upper), float(cumulative)))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total_sum)


class RelayMetrics:
    """The relay's metrics, in a registry of their own (tests run several relays)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter("outbox_relay_events_published",
                                 "Outbox rows acknowledged by Kafka and marked published",
                                 registry=r)
        self.delivery_errors = Counter("outbox_relay_delivery_errors",
                                       "Failed deliveries, by kind (permanent or transient)",
                                       ["kind"], registry=r)
        self.parked = Counter("outbox_relay_rows_parked",
                              "Rows marked failed (bad row, or held back behind one)",
                              registry=r)
        self.latency = HotHistogram("outbox_relay_commit_to_ack_seconds",
                                    "From the row's created_at to Kafka's acknowledgement",
                                    LATENCY_BUCKETS, r)
        self.backlog = Gauge("outbox_relay_backlog", "Pending rows in this relay's shards",
                             registry=r)
        self.oldest_age = Gauge("outbox_relay_oldest_pending_age_seconds",
                                "Age of the oldest pending row in this relay's shards",
                                registry=r)
        self.owned_shards = Gauge("outbox_relay_owned_shards", "Shards this relay owns",
                                  registry=r)
        self.in_flight = Gauge("outbox_relay_in_flight", "Rows produced, not yet marked",
                               registry=r)
        self.last_loop = Gauge("outbox_relay_last_loop_timestamp_seconds",
                               "When the relay loop last completed an iteration", registry=r)


class Health:
    """What ``/health`` reports; updated by the relay loop, read by the HTTP thread."""

    def __init__(self, stale_after: float = 30.0) -> None:
        self.database_ok = False
        self.kafka_ok = True
        # False once a side thread (NOTIFY, statistics, retention) ended by an exception
        self.threads_ok = True
        self.last_loop = time.monotonic()
        self.stale_after = stale_after
        self.detail = "starting"

    def snapshot(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self.last_loop
        ok = self.database_ok and self.kafka_ok and self.threads_ok and age < self.stale_after
        return ok, {"status": "ok" if ok else "unhealthy", "database": self.database_ok,
                    "kafka": self.kafka_ok, "loop_age_seconds": round(age, 3),
                    "detail": self.detail}


def serve(metrics: RelayMetrics, health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the relay's ``/metrics`` and ``/health`` on a daemon thread; returns the server."""
    return http.serve(metrics.registry, health.snapshot, host, port, name="relay-metrics")
