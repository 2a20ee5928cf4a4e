"""``outbox`` with an OpenTelemetry SDK tracer provider whose exporter drops every span:
the cost of recording spans (the relay's send span per batch) without an exporter's.

    .venv/bin/python bench/traced_outbox.py relay run ...   # as `outbox relay run ...`

The spans go through a BatchSpanProcessor, as in production, to an exporter that does
nothing; the count of exported spans is printed at exit (to check spans were made).
With ``TRACED_OUTBOX_NO_PROVIDER`` set, the SDK is imported but no provider set.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Set (to anything): the same process, SDK imported, but no provider set (bench/tracing.py's
# "relay-sdk" variant: what importing the SDK costs without a span made).
NO_PROVIDER_ENV = "TRACED_OUTBOX_NO_PROVIDER"


class DropExporter(SpanExporter):
    """Counts spans, keeps none; says how many at shutdown, in every process (a relay
    process forked by ``--processes`` shuts its provider down before it exits)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        # One write, newline included: print() writes the text and the newline apart, and
        # relay processes stopping together interleaved their reports on a shared stderr.
        sys.stderr.write(f"traced_outbox: {self.count} spans exported (pid {os.getpid()})\n")
        sys.stderr.flush()


def install() -> tuple[TracerProvider, DropExporter]:
    """Make an SDK provider with a dropping exporter the global one."""
    exporter = DropExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider, exporter


def main() -> None:
    if os.environ.get(NO_PROVIDER_ENV):  # the SDK imported, no provider: no span made
        from outbox.cli import main as plain_main

        plain_main(prog_name="outbox")
        return
    provider, _exporter = install()
    atexit.register(provider.shutdown)
    from outbox.cli import main as outbox_main

    outbox_main(prog_name="outbox")


if __name__ == "__main__":
    main()
