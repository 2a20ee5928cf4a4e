"""Debezium's records carry the publish context in ``traceparent`` and ``tracestate`` (the
rendered config places the columns as headers), and a consumer continues the trace from
them."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.orm import Session

from consumers import IncomingEvent
from outbox.publish import Event, publish
from outbox.settings import Settings
from tests.harness.connect import apply_connector, read
from tests.harness.running import consume_until
from tests.tracing.test_tracestate import STATE, upstream

pytestmark = [pytest.mark.connect, pytest.mark.postgres, pytest.mark.kafka]


def test_a_consumer_continues_the_trace_from_debezium_records(
        cdc: dict[str, Any], database_url: str, kafka_bootstrap: str,
        memory_spans: InMemorySpanExporter) -> None:
    apply_connector(cdc)
    # An upstream caller's context with vendor data (tracestate): the publishing span has it.
    with trace.get_tracer("test").start_as_current_span("POST /orders",
                                                        context=upstream()) as request, \
            psycopg.connect(database_url) as conn:
        (event,) = publish(conn, Event("order", "o-1", "OrderCreated", {"orderId": "o-1"}))
    topic = cdc["template"].replace("{aggregatetype}", "order")
    (record,) = read(kafka_bootstrap, topic, 1)
    assert record.header("traceparent") == (event.traceparent or "").encode()
    assert record.header("tracestate") == b"shop=t7,vendor=abc"

    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    seen: list[Any] = []

    def handle(session: Session, incoming: IncomingEvent) -> None:
        seen.append(trace.get_current_span().get_span_context())

    consume_until(settings, f"g-{cdc['name']}", topic, "OrderCreated", handle,
                  lambda _: bool(seen))
    assert seen
    (process,) = [s for s in memory_spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    ctx = request.get_span_context()
    assert process.name == f"process {topic}"
    assert process.context is not None and process.parent is not None
    assert process.context.trace_id == ctx.trace_id  # one trace through Debezium
    assert process.parent.span_id == ctx.span_id  # the child of the publishing span
    assert process.context.trace_state == STATE == seen[0].trace_state
    assert seen[0].span_id == process.context.span_id  # current inside the handler
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(event.id)
