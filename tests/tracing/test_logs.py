"""One log format for every daemon: per-event lines carry the event id, aggregate id and
trace id; librdkafka's own lines go through the same formatter; every Kafka client of
the toolkit is built with the toolkit's logger."""

from __future__ import annotations

import ast
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from consumers import Consumer, ConsumerOptions, IncomingEvent
from outbox.logs import (
    JsonFormatter,
    TextFormatter,
    TraceFilter,
    event_fields,
    message_fields,
    trace_id_of,
)
from outbox.settings import Settings
from tests.harness.kafka import create_topic, produce
from tests.relay.conftest import insert_events, kill_hard, spawn_relay

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def record(**extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("outbox.relay", logging.WARNING, __file__, 1, "event failed",
                            None, None)
    rec.__dict__.update(extra)
    return rec


def test_event_fields_and_both_formats() -> None:
    fields = event_fields(uuid.UUID(int=1), b"order-1", TRACEPARENT)
    assert fields == {"event_id": str(uuid.UUID(int=1)), "aggregate_id": "order-1",
                      "trace_id": TRACE}
    assert event_fields("e", "a", None)["trace_id"] is None
    assert trace_id_of("garbage") is None
    assert message_fields([("eventType", b"T"), ("id", b"e-1"), ("traceparent",
                                                                 TRACEPARENT.encode())],
                          b"k") == {"event_id": "e-1", "aggregate_id": "k", "trace_id": TRACE}
    assert message_fields([("ce_id", b"e-2")], None)["event_id"] == "e-2"
    assert message_fields(None, None) == {"event_id": None, "aggregate_id": None,
                                          "trace_id": None}
    rec = record(action="row_failed", **fields)
    data = json.loads(JsonFormatter().format(rec))
    assert {k: data[k] for k in fields} == fields
    assert data["action"] == "row_failed"
    text = TextFormatter().format(rec)
    assert text.endswith(f"(event_id={fields['event_id']} aggregate_id=order-1 "
                         f"trace_id={TRACE})")


def test_trace_filter_adds_the_current_span(memory_spans: InMemorySpanExporter) -> None:
    rec = record()
    TraceFilter().filter(rec)
    assert not hasattr(rec, "trace_id")
    with trace.get_tracer("t").start_as_current_span("handler") as span:
        ctx = span.get_span_context()
        inside = record()
        TraceFilter().filter(inside)
        own = record(trace_id="x")
        TraceFilter().filter(own)
    assert inside.__dict__["trace_id"] == f"{ctx.trace_id:032x}"
    assert inside.__dict__["span_id"] == f"{ctx.span_id:016x}"
    assert own.__dict__["trace_id"] == "x"  # a line about an event keeps the event's trace


KAFKA_CLIENTS = {"Producer", "KafkaConsumer", "AdminClient"}
# Variables and helpers that are built with with_client_logger (checked where defined).
LOGGED_CONFIGS = {"full", "client_config", "consumer_config"}


def test_every_kafka_client_logs_through_the_toolkit() -> None:
    """librdkafka writes raw lines to stderr unless the client has ``logger=``: every
    confluent-kafka client of the library is built from with_client_logger(...)."""
    unlogged = []
    for package in ("outbox", "relay", "consumers", "connect", "services"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id in KAFKA_CLIENTS and node.args):
                    continue
                arg = ast.unparse(node.args[0])
                if "with_client_logger" in arg or arg.split("(")[0] in LOGGED_CONFIGS:
                    continue
                unlogged.append(f"{path.relative_to(ROOT)}:{node.lineno}: {arg[:60]}")
    assert not unlogged, unlogged
    assert "with_client_logger" in (ROOT / "consumers" / "clients.py").read_text()


@pytest.mark.postgres
@pytest.mark.kafka
def test_relay_lines_are_json_with_event_fields_and_librdkafka_inside(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """A real relay process: a row it cannot send is logged with the event's fields;
    librdkafka's own (debug) lines come out as JSON lines of the same format."""
    (row,) = insert_events(outbox_url, [{"aggregatetype": "bad topic", "aggregateid": "a-1",
                                         "traceparent": TRACEPARENT}], raw=True)
    log = tmp_path / "relay.log"
    proc = spawn_relay(outbox_url, kafka_bootstrap, prefix, "--log-format", "json",
                       "--log-level", "debug", "--kafka-config", "debug=metadata", log=log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if '"row_failed"' in text and "outbox.librdkafka" in text:
                break
            time.sleep(0.3)
    finally:
        kill_hard(proc)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    failed = [p for p in parsed if p.get("action") == "row_failed"]
    assert failed, lines[-20:]
    assert failed[0]["event_id"] == str(row["id"])
    assert failed[0]["aggregate_id"] == "a-1"
    assert failed[0]["trace_id"] == TRACE
    assert any(p["logger"] == "outbox.librdkafka" for p in parsed), lines[-20:]
    assert not [line for line in lines if line.startswith("%")]  # no raw librdkafka line


@pytest.mark.postgres
@pytest.mark.kafka
def test_consumer_retry_line_names_the_event(database_url: str, kafka_bootstrap: str,
                                             topic: str, caplog: pytest.LogCaptureFixture
                                             ) -> None:
    create_topic(kafka_bootstrap, topic, 1)
    event_id = uuid.uuid4()
    produce(kafka_bootstrap, topic, [(b"agg-7", b'{"n": 1}', [
        ("id", str(event_id).encode()), ("eventType", b"Thing"),
        ("traceparent", TRACEPARENT.encode())])])
    calls: list[int] = []
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap)
    engine = create_engine(settings.sqlalchemy_url(), pool_size=2)
    app = Consumer(settings, f"g-{topic}", engine=engine,
                   options=ConsumerOptions(poll_timeout=0.1, max_attempts=3))

    def flaky(session: Session, event: IncomingEvent) -> None:
        calls.append(1)
        if len(calls) <= 2:  # the batch's try, then the careful one: a retry is logged
            raise RuntimeError("fails twice")

    app.add_handler(topic, "Thing", flaky)
    caplog.set_level(logging.WARNING, logger="outbox.consumer")
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        app.request_stop()
        thread.join(30)
        engine.dispose()
    assert len(calls) >= 3
    (retry, *_) = [r.__dict__ for r in caplog.records
                if getattr(r, "action", "") == "handler_retry"]
    assert retry["event_id"] == str(event_id)
    assert retry["aggregate_id"] == "agg-7"
    assert retry["trace_id"] == TRACE
