"""The consumer's ``/metrics`` and ``/health`` (the server itself is :mod:`outbox.http`).

``/health`` answers 200 while the consume loop is turning and the database answers, and
503 otherwise, with a one-line JSON reason, so an orchestrator can restart a stuck member.
"""

from __future__ import annotations

from collections.abc import Callable
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry

from outbox import http

HealthCheck = Callable[[], tuple[bool, str]]


def serve(registry: CollectorRegistry, health: HealthCheck, port: int,
          host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` in a daemon thread."""

    def probe() -> tuple[bool, dict[str, object]]:
        ok, reason = health()
        return ok, {"status": "ok" if ok else "unhealthy", "reason": reason}

    return http.serve(registry, probe, host, port, name="consumer-http")
