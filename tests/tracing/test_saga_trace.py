"""One saga order is one trace: the order API, the relay and all four services, each in
its own process writing its spans to a file (OUTBOX_TRACE_FILE), assembled here."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from outbox.trace_file import read_spans
from services.launcher import SagaProcesses
from tests.saga.test_saga import place, wait_final

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def spans_of(trace_dir: Path, trace_id: str, timeout: float = 20.0,
             want: int = 0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in read_spans(sorted(trace_dir.glob("*.jsonl")))
                 if s["trace_id"] == trace_id]
        if len(spans) >= want or time.monotonic() > deadline:
            return spans
        time.sleep(0.3)


def test_a_saga_order_is_one_connected_trace(saga_env: SagaProcesses, tmp_path: Path) -> None:
    trace_dir = tmp_path / "traces"
    saga_env.env["OUTBOX_TRACE_FILE"] = str(trace_dir / "{service}-{pid}.jsonl")
    saga_env.start_all()
    response = httpx.post(saga_env.api + "/orders", json={
        "customerId": "c-trace", "items": [{"sku": "SKU-BOOK", "quantity": 1}],
        "amount": "20.00", "currency": "EUR"}, headers={"traceparent": CALLER}, timeout=10)
    assert response.status_code == 202, response.text
    order_id = response.json()["orderId"]
    assert wait_final(saga_env, [order_id])[order_id]["status"] == "COMPLETED"
    untraced = place(saga_env, "c-untraced", "SKU-BOOK")  # a trace of its own
    wait_final(saga_env, [untraced["orderId"]])
    # OrderCreated, InventoryReserved, PaymentAuthorized, ShipmentScheduled: 4 hops.
    spans = spans_of(trace_dir, CALLER_TRACE, want=1 + 4 * 2)
    codes = saga_env.stop_all()
    assert all(code == 0 for code in codes.values()), codes
    spans = spans_of(trace_dir, CALLER_TRACE)

    by_id = {s["span_id"]: s for s in spans}
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        kinds[span["kind"]].append(span)
    # The request's span (the framework's, or outbox.tracing.server_span) is the child of
    # the caller's context; every other span has its parent in the trace.
    (server,) = [s for s in kinds["SERVER"] if s["parent_span_id"] == CALLER.split("-")[2]]
    assert server["name"] == "POST /orders"
    assert server["service"] == "order-api"
    for span in spans:
        if span is not server:
            assert span["parent_span_id"] in by_id, f"{span['name']} has no parent"
    # The relay sent each hop in a send span linked to the publishing span (and its child),
    # naming the event.
    sends = kinds["PRODUCER"]
    assert len(sends) >= 4
    assert {s["service"] for s in sends} == {"relay"}
    linked: dict[str, str] = {}  # publishing span -> event id
    for span in sends:
        attrs = span["attributes"]
        assert span["name"] == "send " + attrs["messaging.destination.name"]
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.operation.type"] == "send"
        assert attrs["messaging.batch.message_count"] >= 1
        for link in span["links"]:
            assert link["trace_id"] == CALLER_TRACE
            assert link["span_id"] in by_id
            linked[link["span_id"]] = link["attributes"]["messaging.message.id"]
        assert span["parent_span_id"] == span["links"][0]["span_id"]
    # Every consumer handled its hop in a process span, the child of the span that
    # published the event it handles (a span the relay's send span links to).
    process = kinds["CONSUMER"]
    services = {s["service"] for s in process}
    assert {"inventory", "payment", "shipping", "order-api"} <= services, services
    for span in process:
        attrs = span["attributes"]
        assert span["name"] == "process " + attrs["messaging.destination.name"]
        assert attrs["messaging.system"] == "kafka"
        assert attrs["messaging.operation.type"] == "process"
        assert linked[span["parent_span_id"]] == attrs["messaging.message.id"]
    # The chain: the API published OrderCreated within the request; inventory, payment
    # and shipping each published onwards from their process span.
    publishers = {by_id[p]["service"] for p in linked}
    assert publishers == {"order-api", "inventory", "payment", "shipping"}, publishers
    chain = [s for s in process if s["service"] in ("payment", "shipping")]
    assert all(by_id[s["parent_span_id"]]["kind"] == "CONSUMER" for s in chain)
    # The other order is another trace.
    assert untraced["orderId"] not in {s["attributes"].get("outbox.aggregate_id") for s in spans}
