"""Spans as JSON lines in a file: an OpenTelemetry SDK exporter for tests and debugging.

Needs ``opentelemetry-sdk``. Each finished span is one line, written at once (a simple
span processor), so what a process killed with ``kill -9`` had finished is on disk.
:func:`read_spans` reads the lines of many processes back for assembling a trace.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One span as a JSON-ready dict (ids as lower-case hex, times in ns)."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return {
        "name": span.name, "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
        "parent_trace_id": None if parent is None else f"{parent.trace_id:032x}",
        "service": span.resource.attributes.get("service.name"),
        "start": span.start_time, "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [{"trace_id": f"{link.context.trace_id:032x}",
                   "span_id": f"{link.context.span_id:016x}",
                   "attributes": dict(link.attributes or {})} for link in span.links],
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported span to ``path`` as one JSON object per line.

    ``per_process``: a path with ``{pid}`` in it; a process forked from this one (a relay
    process of ``--processes``) then writes to a file of its own pid, not the parent's.
    """

    def __init__(self, path: str | Path, per_process: str | None = None) -> None:
        self._file = self._open(path)
        self._lock = threading.Lock()
        if per_process is not None and "{pid}" in per_process:
            os.register_at_fork(after_in_child=lambda: self._reopen(per_process))

    @staticmethod
    def _open(path: str | Path) -> TextIO:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Path(path).open("a", encoding="utf-8")  # closed at shutdown

    def _reopen(self, template: str) -> None:
        # In the forked child: the parent's file object is flushed after every export, so
        # nothing of the parent's is lost by closing the child's copy of it.
        self._lock = threading.Lock()
        self._file.close()
        self._file = self._open(template.replace("{pid}", str(os.getpid())))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def install_file_provider(path: str | Path, service: str,
                          per_process: str | None = None) -> TracerProvider:
    """Make a tracer provider writing to ``path`` the global one (service ``service``);
    ``per_process``: see :class:`JsonLinesSpanExporter`."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path, per_process)))
    trace.set_tracer_provider(provider)
    return provider


def read_spans(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every span of the files at ``paths`` (what :class:`JsonLinesSpanExporter` wrote)."""
    spans: list[dict[str, Any]] = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                spans.append(json.loads(line))
    return spans


__all__ = ["JsonLinesSpanExporter", "install_file_provider", "read_spans", "span_record"]
