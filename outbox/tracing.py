"""OpenTelemetry traces across the outbox hop, when ``opentelemetry-api`` is installed.

Everything here is optional: without the package (``pip install 'outbox-toolkit[otel]'``)
every function is a cheap no-op, and with the API but no SDK tracer provider configured
no span is built. Spans are only recorded once a tracer provider is set, by the
application, by ``opentelemetry-instrument``, or by :func:`configure_from_env`
(``OUTBOX_TRACE_FILE``: JSON lines, :mod:`outbox.trace_file`).

- :func:`current_context`: what :func:`outbox.publish.publish` stores in the row's
  ``traceparent`` and ``tracestate`` when the caller passes none (captured at insert time);
- :class:`RelaySpans`: one ``send`` span (PRODUCER) per relay batch, linked to the
  publish context of each of its rows (and a child of the first one's, so a batch of one
  order's events sits in that order's trace);
- :func:`process_span`: a ``process`` span (CONSUMER) around each handler, the child of
  the context in the record's ``traceparent`` header; events the handler publishes carry
  that span's context forward;
- :func:`server_span`: a SERVER span around an HTTP request (the saga's ``POST /orders``).

Semantic conventions: OpenTelemetry's messaging conventions (``messaging.system=kafka``,
``messaging.operation.type``, ``messaging.destination.name`` ...). docs/tracing.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from outbox.errors import ConfigurationError
from outbox.rows import AGGREGATEID, AGGREGATETYPE, ID, TRACEPARENT, TRACESTATE

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.span import TraceState
except ImportError:  # the optional extra is not installed: everything is a no-op
    trace = None  # type: ignore[assignment]

TRACER_NAME = "outbox"
TRACE_FILE_ENV = "OUTBOX_TRACE_FILE"
# Links of one relay span (OpenTelemetry's default limit is 128): the first rows' publish
# contexts. Each link costs the SDK ~3 µs and several objects the batch span processor
# keeps until export (garbage-collector work); 32 cost a 2,000-row batch ~0.17 ms, 128
# ~0.6 ms (docs/benchmarks.md). Every row's trace continues without one: its consumer's
# process span is the child of the publish context in the record's header.
MAX_LINKS = 32
# The longest tracestate stored: what W3C requires every system to propagate (a longer one
# is left out at capture, and refused in an Event).
MAX_TRACESTATE_LENGTH = 512
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_IDS = ("0" * 32, "0" * 16)
# The trace flags of each two-digit value, made once (TraceFlags(int(...)) per parse costs).
_FLAGS: dict[str, Any] = {} if trace is None else {f"{n:02x}": TraceFlags(n) for n in range(256)}


def available() -> bool:
    """True when ``opentelemetry-api`` is importable."""
    return trace is not None


def enabled() -> bool:
    """True when spans are recorded: the API is installed and a tracer provider is set."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def shutdown() -> None:
    """Flush and shut down the tracer provider, if it is the SDK's (or any with a
    ``shutdown``): for a process that ends with ``os._exit`` (a forked relay process),
    where the SDK's own exit hook does not run and spans still queued would be lost."""
    if not enabled():
        return
    stop = getattr(trace.get_tracer_provider(), "shutdown", None)
    if callable(stop):
        try:
            stop()
        except Exception:
            logging.getLogger("outbox.tracing").warning("tracer provider shutdown failed",
                                                        exc_info=True)


# (provider, its tracer): the provider is held, so a new provider is never mistaken for a
# collected one that had the same id() (tests set and shut down several).
_cached: list[tuple[Any, Any]] = []


def _tracer() -> Any:
    provider = trace.get_tracer_provider()
    if not _cached or _cached[0][0] is not provider:
        _cached[:] = [(provider, provider.get_tracer(TRACER_NAME))]
    return _cached[0][1]


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or None (no API, no valid span)."""
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def current_context() -> tuple[str, str | None] | None:
    """The W3C ``traceparent`` and ``tracestate`` (None when empty, or longer than
    :data:`MAX_TRACESTATE_LENGTH`) of the current span, or None (no API, no valid span)."""
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    state = ctx.trace_state.to_header() if ctx.trace_state else None
    return (f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}",
            state if state and len(state) <= MAX_TRACESTATE_LENGTH else None)


def parse_traceparent(value: str | bytes | None, tracestate: str | bytes | None = None
                      ) -> Any:
    """The remote ``SpanContext`` of a W3C ``traceparent`` value, or None if it is not one
    (or the API is not installed); ``tracestate``, if given, is its trace state."""
    if trace is None or value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    text = value.strip()
    found = _TRACEPARENT.match(text)
    if found is None:
        return None
    version, trace_id, span_id, flags = found.groups()
    if version == "ff" or trace_id == _INVALID_IDS[0] or span_id == _INVALID_IDS[1]:
        return None
    # Version 00 is exactly 55 characters; a later one may append "-" and more fields.
    if len(text) != 55 and (version == "00" or text[55] != "-"):
        return None
    state = None
    if tracestate:
        header = tracestate.decode("ascii", "replace") if isinstance(tracestate, bytes) \
            else tracestate
        state = TraceState.from_header([header])
    return SpanContext(int(trace_id, 16), int(span_id, 16), True, _FLAGS[flags], state)


def _parent(traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> Any:
    remote = parse_traceparent(traceparent, tracestate)
    if remote is None:
        return None
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


@contextlib.contextmanager
def server_span(name: str, traceparent: str | None = None,
                attributes: Mapping[str, Any] | None = None) -> Iterator[None]:
    """A SERVER span named ``name`` around the block, the child of ``traceparent`` (the
    request's header) if valid; current inside the block, so what it publishes carries it.
    Nothing new when a span is current already (the web framework's own instrumentation,
    which FastAPI has when OpenTelemetry is installed, traced the request)."""
    if not enabled() or trace.get_current_span().get_span_context().is_valid:
        yield
        return
    with _tracer().start_as_current_span(name, context=_parent(traceparent),
                                         kind=SpanKind.SERVER,
                                         attributes=dict(attributes or {})):
        yield


class _CurrentSpan:
    """``span`` current inside the block, ended after it; an exception is recorded on it
    and marks it failed, and goes on. (What ``start_as_current_span`` does, at half the
    cost: a consumer makes one per message.)"""

    __slots__ = ("span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span
        self.token: Any = None

    def __enter__(self) -> None:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 _tb: object) -> None:
        otel_context.detach(self.token)
        if exc is not None:
            self.span.record_exception(exc)
            self.span.set_status(Status(StatusCode.ERROR, f"{kind.__name__ if kind else ''}: "
                                                          f"{exc}"))
        self.span.end()


def process_span(topic: str, partition: int, offset: int, event_id: str,
                 headers: Mapping[str, bytes], handler: str,
                 key: str | None = None) -> AbstractContextManager[None]:
    """A ``process {topic}`` CONSUMER span around one handler call, the child of the
    record's ``traceparent`` header (the publish context). Current inside the block: what
    the handler publishes carries its context. An exception marks it failed, and goes on."""
    if not enabled():
        return contextlib.nullcontext()
    attributes: dict[str, Any] = {
        "messaging.system": "kafka", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset, "messaging.message.id": event_id,
        "outbox.handler": handler}
    if key is not None:
        attributes["messaging.kafka.message.key"] = key
    event_type = headers.get("eventType") or headers.get("ce_type")
    if event_type is not None:
        attributes["outbox.event_type"] = event_type.decode("utf-8", "replace")
    parent = _parent(headers.get("traceparent"), headers.get("tracestate"))
    return _CurrentSpan(_tracer().start_span(f"process {topic}", context=parent,
                                             kind=SpanKind.CONSUMER, attributes=attributes))


class RelaySpans:
    """The relay's ``send`` spans: one per batch, from hand-over to librdkafka until every
    delivery report is in (:meth:`started` / :meth:`settled`).

    Rows are the relay's tuples (relay.rows), whose first columns are a stored row's
    (:mod:`outbox.rows`): ``id, aggregatetype, aggregateid, type, payload, created_ms,
    correlation_id, causation_id, traceparent, tracestate, ...``. The
    span links to each row's publish context (the first :data:`MAX_LINKS`, each link naming
    its event id) and is the child of the first one, so a batch of one order's events is in
    its trace. A batch whose rows carry no ``traceparent`` gets no span (it would be a
    trace of its own, of the relay alone).
    """

    def __init__(self, topic_of: Callable[[str], str]) -> None:
        self.topic_of = topic_of
        self.open: dict[int, tuple[Any, int]] = {}  # id(batch) -> (span, row count)

    def started(self, batch: object, rows: Sequence[Sequence[Any]],
                written: Callable[[Sequence[Any]], Any] | None = None) -> bool:
        """Open the ``send`` span of ``batch``; False (nothing opened) unless spans are
        recorded and a row carries a ``traceparent``. ``written``: the sort key that puts
        rows in the order their events were written, when ``rows`` are in another (the
        relay's batches: shard, then seq); the span's parent and links follow it."""
        if not rows or not enabled():
            return False
        traced = [row for row in rows if row[TRACEPARENT] is not None]
        if written is not None:
            traced.sort(key=written)
        links: list[Any] = []
        # One parse per distinct traceparent: a transaction's rows share their span's.
        contexts: dict[str, Any] = {}
        for row in traced:
            value = row[TRACEPARENT]
            remote = contexts.get(value, False)
            if remote is False:
                remote = contexts[value] = parse_traceparent(value, row[TRACESTATE])
            if remote is not None:
                links.append(Link(remote, {"messaging.message.id": row[ID]}))
                if len(links) == MAX_LINKS:
                    break
        if not links:
            return False
        parent = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context))
        topics = sorted({self.topic_of(t) for t in {row[AGGREGATETYPE] for row in rows}})
        destination = topics[0] if len(topics) == 1 else "multiple"
        attributes: dict[str, Any] = {
            "messaging.system": "kafka", "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.batch.message_count": len(rows)}
        if len(topics) == 1:
            attributes["messaging.destination.name"] = destination
        else:
            attributes["outbox.destinations"] = topics
        if len(rows) == 1:
            attributes["messaging.message.id"] = rows[0][ID]
            attributes["messaging.kafka.message.key"] = rows[0][AGGREGATEID]
        span = _tracer().start_span(f"send {destination}", context=parent,
                                    kind=SpanKind.PRODUCER, attributes=attributes, links=links)
        if len(self.open) > 10_000:  # batches lost with a connection never settle
            for stale, _ in self.open.values():
                stale.end()
            self.open.clear()
        self.open[id(batch)] = (span, len(rows))
        return True

    def settled(self, batch: object, failed: int, partitions: Collection[int] = ()) -> None:
        """Close the span of ``batch``: an error status if ``failed`` rows failed; the
        partition when every record went to the same one (``partitions``: those its
        records were appended to)."""
        found = self.open.pop(id(batch), None)
        if found is None:
            return
        span, count = found
        if len(distinct := set(partitions)) == 1:
            span.set_attribute("messaging.destination.partition.id", str(next(iter(distinct))))
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} of {count} records failed"))
        span.end()


_configured: list[str] = []


def configure_from_env(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Set a tracer provider that writes spans as JSON lines to ``OUTBOX_TRACE_FILE``
    (``{service}`` and ``{pid}`` in it are replaced; a forked process writes to its own
    pid's file), if that variable is set. True if it
    did. A :class:`ConfigurationError` (one line) if it is set without the SDK."""
    env = os.environ if environ is None else environ
    path = env.get(TRACE_FILE_ENV, "").strip()
    if not path or _configured:
        return False
    try:
        from outbox.trace_file import install_file_provider
    except ImportError:
        raise ConfigurationError(
            f"{TRACE_FILE_ENV} is set but opentelemetry-sdk is not installed: "
            "pip install 'outbox-toolkit[otel]' opentelemetry-sdk") from None
    per_process = path.replace("{service}", service)
    target = per_process.replace("{pid}", str(os.getpid()))
    try:
        install_file_provider(target, env.get("OTEL_SERVICE_NAME") or service, per_process)
    except OSError as exc:
        raise ConfigurationError(f"{TRACE_FILE_ENV}: cannot write {target!r}: "
                                 f"{exc.strerror or exc}") from None
    _configured.append(target)
    return True


__all__ = ["MAX_LINKS", "MAX_TRACESTATE_LENGTH", "TRACE_FILE_ENV", "RelaySpans", "available",
           "configure_from_env", "current_context", "current_traceparent", "enabled",
           "parse_traceparent", "process_span", "server_span", "shutdown"]
