"""Fixtures of the tracing tests: the saga's processes (tests/saga), an in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from tests.harness.connect import cdc
from tests.relay.conftest import outbox_url, prefix, start_relay
from tests.saga.conftest import saga_env

__all__ = ["cdc", "memory_spans", "outbox_url", "prefix", "saga_env", "start_relay"]


def _reset_provider() -> None:
    # OpenTelemetry sets the global provider once per process; its own tests reset it so.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    """A global SDK tracer provider for this test, its finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _reset_provider()
