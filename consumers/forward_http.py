"""One HTTP request of ``outbox forward``: headers, send, what the answer means, metrics.

What an answer means (:func:`classify`): 2xx is done; 408, 429, 5xx, a timeout or no
connection is worth retrying; any other status (400, 404, 422, a redirect ...) will not
get better by retrying and is dead-lettered. A ``Retry-After`` (seconds or an HTTP date)
sets the next attempt's delay, capped by the route's ``retry_after_cap``; otherwise the
delay is exponential backoff with jitter (:func:`outbox.backoff.compute_backoff`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from dataclasses import dataclass

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumers.forward_config import Route
from consumers.message import IncomingEvent
from outbox import tracing
from outbox.backoff import compute_backoff

DONE, RETRY, REJECT = "done", "retry", "reject"
EXCERPT_BYTES = 512
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Attempt:
    """What one request got: a status (None: no answer), latency, the body's first bytes."""

    status: int | None
    latency: float
    excerpt: str = ""
    retry_after: float | None = None
    error: str | None = None

    @property
    def outcome(self) -> str:
        """:data:`DONE`, :data:`RETRY` or :data:`REJECT`."""
        return classify(self.status)

    @property
    def status_class(self) -> str:
        """``2xx`` … ``5xx``, or ``timeout`` / ``connection-error`` when nothing answered."""
        if self.status is not None:
            return f"{self.status // 100}xx"
        return "timeout" if self.error and self.error.startswith("timeout") else "connection-error"

    def summary(self) -> str:
        """One line for logs and dead letters."""
        if self.status is None:
            return f"{self.error} after {self.latency * 1000:.0f} ms"
        text = f"HTTP {self.status} after {self.latency * 1000:.0f} ms"
        return text + (f": {self.excerpt[:200]}" if self.excerpt else "")


def classify(status: int | None) -> str:
    """What a status means for the event: done, retry later, or reject (dead letter)."""
    if status is None:
        return RETRY
    if 200 <= status < 300:
        return DONE
    if status in (408, 429) or status >= 500:
        return RETRY
    return REJECT


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def retry_delay(route: Route, attempts: int, retry_after: float | None) -> float:
    """Seconds before attempt ``attempts + 1``: what the server asked for, else backoff."""
    if retry_after is not None:
        return min(retry_after, route.retry_after_cap)
    return compute_backoff(attempts, base=route.backoff_base, cap=route.backoff_cap)


class ForwardMetrics:
    """Per-route Prometheus metrics, in the consumer's registry (one ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter("outbox_forward_requests", "HTTP requests by status class",
                                ["route", "status_class"], registry=r)
        self.seconds = Histogram("outbox_forward_request_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("outbox_forward_retries", "Attempts that will be retried",
                               ["route"], registry=r)
        self.delivered = Counter("outbox_forward_delivered", "Events an endpoint accepted (2xx)",
                                 ["route"], registry=r)
        self.dead_lettered = Counter("outbox_forward_dead_lettered",
                                     "Events given up on, by reason", ["route", "reason"],
                                     registry=r)
        self.parked = Gauge("outbox_forward_parked", "Events waiting for a retry (their own, "
                            "or an earlier event of their key's)", ["route"], registry=r)


class RouteClient:
    """Sends events over one route with a kept-alive connection pool."""

    def __init__(self, route: Route, metrics: ForwardMetrics) -> None:
        self.route = route
        self.metrics = metrics
        # No answer at the last attempt (timeout, refused): the consume loop parks new
        # events without trying, so a hung endpoint costs one timeout, not one per event,
        # and the retry workers send one probe per backoff step instead of every head.
        self.unreachable = False
        self.silent = 0  # attempts in a row without an answer
        self.paused_until = 0.0
        self.client = httpx.Client(timeout=route.timeout, follow_redirects=False,
                                   headers={"User-Agent": "outbox-forward"})

    def headers(self, event: IncomingEvent) -> dict[str, str]:
        """The route's headers plus the forwarder's own (an endpoint dedupes on the key)."""
        headers = {"Content-Type": "application/json", **self.route.headers,
                   "Idempotency-Key": str(event.id), "Outbox-Event-Type": event.type}
        if event.correlation_id:
            headers["Outbox-Correlation-Id"] = event.correlation_id
        # The handler's process span when tracing (outbox.tracing), so the endpoint's work
        # is its child; else (or for a parked retry) the event's own context.
        current = tracing.current_context()
        traceparent, tracestate = current or (event.traceparent, event.tracestate)
        if traceparent:
            headers["traceparent"] = traceparent
            if tracestate:
                headers["tracestate"] = tracestate
        return headers

    def send(self, event: IncomingEvent, body: bytes) -> Attempt:
        """One request; never raises for what the network or the endpoint did."""
        started = time.perf_counter()
        try:
            with self.client.stream(self.route.method, self.route.url, content=body,
                                    headers=self.headers(event)) as response:
                excerpt = b""
                for chunk in response.iter_bytes():
                    excerpt += chunk
                    if len(excerpt) >= EXCERPT_BYTES:
                        break
                attempt = Attempt(response.status_code, time.perf_counter() - started,
                                  excerpt[:EXCERPT_BYTES].decode("utf-8", "replace"),
                                  parse_retry_after(response.headers.get("Retry-After")))
        except httpx.TimeoutException:
            attempt = Attempt(None, time.perf_counter() - started,
                              error=f"timeout after {self.route.timeout:g}s")
        except httpx.TransportError as exc:
            kind = "connection failed" if isinstance(exc, httpx.ConnectError) else "transport error"
            attempt = Attempt(None, time.perf_counter() - started,
                              error=f"{kind}: {self.route.scrub(str(exc) or type(exc).__name__)}")
        self.unreachable = attempt.status is None
        if attempt.status is None:
            self.silent += 1
            self.paused_until = time.monotonic() + compute_backoff(
                self.silent, base=self.route.backoff_base, cap=self.route.backoff_cap)
        else:
            self.silent, self.paused_until = 0, 0.0
        self.metrics.requests.labels(self.route.name, attempt.status_class).inc()
        self.metrics.seconds.labels(self.route.name).observe(attempt.latency)
        return attempt

    def paused(self) -> bool:
        """Whether retry workers should leave this route alone for now (no answer lately)."""
        return time.monotonic() < self.paused_until

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


__all__ = ["DONE", "REJECT", "RETRY", "Attempt", "ForwardMetrics", "RouteClient", "classify",
           "parse_retry_after", "retry_delay"]
