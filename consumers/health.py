"""The consumer's health, and its ``/metrics`` + ``/health`` endpoint (:mod:`outbox.http`).

``/health`` answers 200 only while the consumer is really consuming: it passed its start-up
checks, the consume loop turns, the database answered its last batch, dead letters are
being acknowledged, and librdkafka reaches at least one broker. Otherwise 503 with a
one-line reason, so an orchestrator can restart a stuck member or hold traffic back.

Broker connectivity comes from librdkafka itself: its error callback reports "all brokers
down" at once, and its statistics (every ``stats_interval``) say which broker connections
are up, so the state recovers when the broker is back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer

from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from outbox import http

HealthCheck = Callable[[], tuple[bool, str]]


class ConsumerHealth:
    """What ``/health`` reports; written by the consume loop and librdkafka's callbacks
    (on the loop's thread), read by the HTTP thread."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self.phase = "not running"  # "starting", "consuming", "not running"
        self.last_loop = time.monotonic()
        self.db_failures = 0
        self.dead_letter_problem: str | None = None
        self.brokers_up: bool | None = None  # None: not known yet
        self.brokers_down_since = 0.0
        self.broker_error = ""
        self.fatal: KafkaError | None = None
        self._lock = threading.Lock()

    # --------------------------------------------------------------- librdkafka callbacks
    def on_error(self, err: KafkaError) -> None:
        """``error_cb``: all brokers down, and fatal errors (handed to the loop)."""
        if err.fatal():
            self.fatal = err
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            with self._lock:
                if self.brokers_up is not False:
                    self.brokers_down_since = time.monotonic()
                self.brokers_up = False
                self.broker_error = err.str()
        elif self.brokers_up is False:
            self.broker_error = err.str()  # the latest reason while down

    def on_stats(self, stats: str) -> None:
        """``stats_cb``: is any broker connection up?"""
        try:
            brokers = json.loads(stats).get("brokers", {})
        except ValueError:
            return
        up = any(b.get("state") == "UP" for b in brokers.values())
        with self._lock:
            if not up and self.brokers_up is not False:
                self.brokers_down_since = time.monotonic()
                self.broker_error = "no broker connection is up"
            self.brokers_up = up

    def broker_reached(self) -> None:
        """A message arrived: a broker is up, whatever the last statistics said."""
        if self.brokers_up is not True:
            with self._lock:
                self.brokers_up = True

    # ------------------------------------------------------------------------- verdict
    def check(self) -> tuple[bool, str]:
        """(healthy, one-line reason)."""
        if self.phase != "consuming":
            return False, self.phase
        idle = time.monotonic() - self.last_loop
        if idle > self.stall_after:
            return False, f"consume loop stalled for {idle:.0f}s"
        if self.db_failures:
            return False, f"database unavailable ({self.db_failures} failed attempts)"
        if self.dead_letter_problem:
            return False, f"dead letters not acknowledged: {self.dead_letter_problem}"
        if self.brokers_up is False:
            down = time.monotonic() - self.brokers_down_since
            return False, f"no Kafka broker reachable for {down:.0f}s: {self.broker_error}"
        return True, "consuming"

    def snapshot(self) -> tuple[bool, dict[str, object]]:
        """The verdict with the figures behind it, for ``/health``."""
        ok, reason = self.check()
        return ok, {"status": "ok" if ok else "unhealthy", "reason": reason,
                    "last_poll_age_seconds": round(time.monotonic() - self.last_loop, 3),
                    "brokers_up": self.brokers_up}


def serve(registry: CollectorRegistry,
          health: Callable[[], tuple[bool, dict[str, object]] | tuple[bool, str]],
          port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` in a daemon thread.

    ``health`` returns (healthy, details) — :meth:`ConsumerHealth.snapshot` — or
    (healthy, one-line reason), which is served as ``{"status", "reason"}``.
    """

    def probe() -> tuple[bool, dict[str, object]]:
        ok, info = health()
        if isinstance(info, str):
            return ok, {"status": "ok" if ok else "unhealthy", "reason": info}
        return ok, info

    return http.serve(registry, probe, host, port, name="consumer-http")
