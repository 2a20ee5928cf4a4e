"""``tracestate`` (schema version 6): publish() stores the publishing span's, the relay
sends it as a header, and a consumer's process span continues the context with it."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from sqlalchemy.orm import Session

from consumers import IncomingEvent
from outbox import migrate, tracing
from outbox.errors import EventValidationError
from outbox.publish import Event, publish
from outbox.settings import Settings
from relay.queries import Queries
from tests.core.test_migrations import empty_db
from tests.harness.kafka import consume_all, create_topic
from tests.harness.running import consume_until
from tests.relay.conftest import relay_settings

__all__ = ["empty_db"]  # a fixture: a database of its own

STATE = TraceState([("shop", "t7"), ("vendor", "abc")])
# An upstream caller's context with vendor data: the publishing span inherits its state.
UPSTREAM = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True,
                       TraceFlags(1), STATE)


def upstream(state: TraceState = STATE) -> Any:
    remote = SpanContext(UPSTREAM.trace_id, UPSTREAM.span_id, True, TraceFlags(1), state)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def test_current_context_has_the_spans_tracestate(memory_spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request", context=upstream()) as span:
        parent, state = tracing.current_context() or ("", "")
    ctx = span.get_span_context()
    assert parent == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert state == "shop=t7,vendor=abc"
    with tracer.start_as_current_span("plain"):
        assert (tracing.current_context() or ("", "x"))[1] is None  # no state: None
    long = TraceState([(f"k{n}", "v" * 200) for n in range(3)])  # over 512 characters
    with tracer.start_as_current_span("long", context=upstream(long)):
        assert (tracing.current_context() or ("", "x"))[1] is None


def test_parse_traceparent_with_tracestate() -> None:
    ctx = tracing.parse_traceparent(f"00-{UPSTREAM.trace_id:032x}-{UPSTREAM.span_id:016x}-01",
                                    b"shop=t7,vendor=abc")
    assert ctx is not None and ctx.trace_state == STATE and ctx.trace_flags.sampled


@pytest.mark.postgres
def test_publish_stores_the_tracestate_and_checks_one_given(
        outbox_url: str, memory_spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request", context=upstream()), \
            psycopg.connect(outbox_url) as conn:
        captured, own, parent_only = publish(
            conn, Event("order", "o-1", "Created", {}),
            Event("order", "o-1", "Paid", {}, traceparent="00-ab-cd-01", tracestate="a=1"),
            Event("order", "o-1", "Shipped", {}, traceparent="00-ab-cd-01"))
        stored: dict[Any, str | None] = dict(conn.execute(
            "select id, tracestate from outbox").fetchall())
    assert captured.tracestate == "shop=t7,vendor=abc" == stored[captured.id]
    assert stored[own.id] == "a=1"
    assert stored[parent_only.id] is None  # a caller's own traceparent: no state added
    for bad, why in (("x" * 513, "at most 512"), ("é=1", "printable ASCII"),
                     ("a=1\n", "printable ASCII")):
        with pytest.raises(EventValidationError, match=why), \
                psycopg.connect(outbox_url) as conn:
            publish(conn, Event("order", "o-1", "Created", {}, tracestate=bad))


@pytest.mark.postgres
@pytest.mark.kafka
def test_tracestate_reaches_the_consumers_process_span(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any,
        memory_spans: InMemorySpanExporter) -> None:
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    topic = prefix + "-order"
    create_topic(kafka_bootstrap, topic, 1)
    with trace.get_tracer("test").start_as_current_span("POST /orders",
                                                        context=upstream()) as request, \
            psycopg.connect(outbox_url) as conn:
        (event,) = publish(conn, Event("order", "o-1", "OrderCreated", {"orderId": "o-1"}))
        publish(conn, Event("order", "o-2", "OrderCreated", {}, traceparent="00-ab-cd-01"))
    relay = start_relay(settings, pipeline_depth=1)
    records = consume_all(kafka_bootstrap, topic, expected=2, timeout=30)
    by_key = {r.key: r for r in records}
    assert by_key[b"o-1"].header("tracestate") == b"shop=t7,vendor=abc"
    assert "tracestate" not in [k for k, _ in by_key[b"o-2"].headers]  # null: no header

    seen: list[Any] = []

    def handle(session: Session, incoming: IncomingEvent) -> None:
        if incoming.key == "o-1":
            seen.append(trace.get_current_span().get_span_context())

    consume_until(settings, f"g-{prefix}", topic, "OrderCreated", handle, lambda _: bool(seen))
    assert relay.stop() == 0
    assert seen and seen[0].trace_state == STATE  # current inside the handler
    (process,) = [s for s in memory_spans.get_finished_spans()
                  if s.kind is SpanKind.CONSUMER
                  and s.attributes and s.attributes["messaging.message.id"] == str(event.id)]
    assert process.context is not None and process.context.trace_state == STATE
    assert process.parent is not None
    assert process.parent.span_id == request.get_span_context().span_id
    (send,) = [s for s in memory_spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert send.links[0].context.trace_state == STATE  # the link carries it too


@pytest.mark.postgres
@pytest.mark.kafka
def test_a_batch_without_traceparent_gets_no_span(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any,
        memory_spans: InMemorySpanExporter) -> None:
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    create_topic(kafka_bootstrap, prefix + "-order", 1)
    with psycopg.connect(outbox_url) as conn:
        publish(conn, Event("order", "o-1", "Created", {}), Event("order", "o-2", "Created", {}))
    relay = start_relay(settings, pipeline_depth=1)
    assert len(consume_all(kafka_bootstrap, prefix + "-order", expected=2, timeout=30)) == 2
    time.sleep(0.5)  # the batch settles after its reports
    assert relay.stop() == 0
    assert not [s for s in memory_spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]


@pytest.mark.postgres
def test_a_relay_on_schema_version_5_says_upgrade(empty_db: str) -> None:
    settings = Settings(database_url=empty_db)
    migrate.upgrade(settings)
    migrate.downgrade(settings, "0005")
    with psycopg.connect(empty_db) as conn:
        problem = Queries.for_settings(settings).schema_problem(conn)
    assert problem is not None and "tracestate" in problem and "outbox db upgrade" in problem
    migrate.upgrade(settings)
    with psycopg.connect(empty_db) as conn:
        assert Queries.for_settings(settings).schema_problem(conn) is None


def test_forward_sends_the_tracestate_with_the_traceparent(
        memory_spans: InMemorySpanExporter) -> None:
    import uuid
    from types import SimpleNamespace

    from consumers.forward_http import RouteClient

    parent = f"00-{UPSTREAM.trace_id:032x}-{UPSTREAM.span_id:016x}-01"
    headers = {"traceparent": parent.encode(), "tracestate": b"shop=t7,vendor=abc"}
    event = IncomingEvent(uuid.uuid4(), "Created", {}, "k", "t", 0, 1, 0, headers)
    client: Any = SimpleNamespace(route=SimpleNamespace(headers={}))
    sent = RouteClient.headers(client, event)  # outside a span: the event's own
    assert (sent["traceparent"], sent["tracestate"]) == (parent, "shop=t7,vendor=abc")
    with tracing.process_span("t", 0, 1, str(event.id), headers, "forward"):
        inside = RouteClient.headers(client, event)
    assert inside["traceparent"] != parent and inside["tracestate"] == "shop=t7,vendor=abc"
    plain = IncomingEvent(uuid.uuid4(), "Created", {}, "k", "t", 0, 1, 0, {})
    assert "tracestate" not in RouteClient.headers(client, plain)
