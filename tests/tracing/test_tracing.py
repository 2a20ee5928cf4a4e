"""outbox.tracing: optional, the publish context captured at insert time, the relay's
send span per batch with its links, a handler's process span."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from outbox import tracing
from outbox.errors import ConfigurationError
from outbox.publish import Event, publish
from outbox.trace_file import read_spans
from tests.harness.kafka import consume_all, create_topic
from tests.relay.conftest import relay_settings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# Hides opentelemetry the way a missing package does (a None entry makes import fail).
WITHOUT_OTEL = """
import sys
for name in [n for n in sys.modules if n.startswith("opentelemetry")]:
    del sys.modules[name]
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Hide())
from outbox import tracing
import outbox.publish, relay.loop, consumers.handlers, consumers, relay.cli, consumers.cli
assert not tracing.available() and not tracing.enabled()
assert tracing.current_traceparent() is None
assert tracing.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") is None
with tracing.process_span("t", 0, 1, "id", {}, "h"):
    pass
spans = tracing.RelaySpans(lambda t: t)
spans.started(object(), [("id", "order", "k", "T", None, 0, None, None, None)])
spans.settled(object(), 0)
from outbox.errors import ConfigurationError
try:
    tracing.configure_from_env("relay", {"OUTBOX_TRACE_FILE": "/tmp/x.jsonl"})
except ConfigurationError as exc:
    print("config error:", exc)
"""


def test_everything_works_without_opentelemetry() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_OTEL], capture_output=True,
                          text=True, timeout=60, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert "config error: OUTBOX_TRACE_FILE is set but opentelemetry-sdk is not installed" \
        in done.stdout


@pytest.mark.parametrize(("value", "valid"), [
    (TRACEPARENT, True),
    (TRACEPARENT.encode(), True),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    (TRACEPARENT + "-extra", False),  # version 00 has exactly four fields
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", True),
    ("garbage", False), ("", False), (None, False), (b"\xff\xfe", False),
])
def test_parse_traceparent(value: Any, valid: bool) -> None:
    ctx = tracing.parse_traceparent(value)
    assert (ctx is not None) == valid
    if valid:
        assert f"{ctx.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert ctx.is_remote


def test_unwritable_trace_file_is_one_line(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="OUTBOX_TRACE_FILE: cannot write"):
        tracing.configure_from_env("relay", {"OUTBOX_TRACE_FILE": str(blocker / "x.jsonl")})
    assert not tracing.enabled()


FORKED = """
import os, sys
from opentelemetry import trace
from outbox import tracing
assert tracing.configure_from_env("relay", {"OUTBOX_TRACE_FILE": sys.argv[1]})
with trace.get_tracer("t").start_as_current_span("parent-span"):
    pass
pid = os.fork()
if pid == 0:
    with trace.get_tracer("t").start_as_current_span("child-span"):
        pass
    tracing.shutdown()
    os._exit(0)
os.waitpid(pid, 0)
print(pid)
"""


def test_trace_file_with_pid_is_one_file_per_forked_process(tmp_path: Any) -> None:
    """``{pid}``: a process forked after the configuration (a relay process of
    --processes) writes its spans to its own file, not its parent's."""
    template = str(tmp_path / "spans-{service}-{pid}.jsonl")
    result = subprocess.run([sys.executable, "-c", FORKED, template], capture_output=True,
                            text=True, timeout=60, check=True)
    child = int(result.stdout.strip())
    files = {path.name: [span["name"] for span in read_spans([path])]
             for path in tmp_path.iterdir()}
    assert files.pop(f"spans-relay-{child}.jsonl") == ["child-span"], files
    assert list(files.values()) == [["parent-span"]], files


def test_no_provider_no_span_no_capture() -> None:
    assert not tracing.enabled()
    with trace.get_tracer("t").start_as_current_span("x"):
        assert tracing.current_traceparent() is None  # a no-op span has no valid context


@pytest.mark.postgres
def test_publish_captures_the_current_span_at_insert(outbox_url: str,
                                                     memory_spans: InMemorySpanExporter
                                                     ) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as span, psycopg.connect(outbox_url) as conn:
        ctx = span.get_span_context()
        captured, kept = publish(conn, Event("order", "o-1", "Created", {}),
                                 Event("order", "o-1", "Paid", {}, traceparent=TRACEPARENT))
    untraced = Event("order", "o-2", "Created", {})
    with psycopg.connect(outbox_url) as conn:
        publish(conn, untraced)
        stored: dict[str, str | None] = dict(conn.execute(
            "select id::text, traceparent from outbox").fetchall())
    # as OpenTelemetry's W3C propagator writes it (flags: sampled, and random ids)
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert captured.traceparent == expected
    assert stored[str(captured.id)] == expected
    assert stored[str(kept.id)] == TRACEPARENT  # the caller's own wins
    assert stored[str(untraced.id)] is None


@pytest.mark.postgres
@pytest.mark.kafka
def test_relay_send_span_per_batch_links_each_publish_context(
        outbox_url: str, kafka_bootstrap: str, prefix: str, start_relay: Any,
        memory_spans: InMemorySpanExporter) -> None:
    settings = relay_settings(outbox_url, kafka_bootstrap, prefix)
    create_topic(kafka_bootstrap, prefix + "-order", 1)
    tracer = trace.get_tracer("test")
    contexts = []
    with psycopg.connect(outbox_url) as conn:
        for n in range(3):
            with tracer.start_as_current_span(f"request-{n}") as span:
                publish(conn, Event("order", f"o-{n}", "Created", {"n": n}))
                contexts.append(span.get_span_context())
        publish(conn, Event("order", "o-x", "Created", {}))  # no trace: no link
    relay = start_relay(settings, pipeline_depth=1)  # every shard in one group: one batch
    records = consume_all(kafka_bootstrap, prefix + "-order", expected=4, timeout=30)
    assert len(records) == 4
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not [
            s for s in memory_spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]:
        time.sleep(0.1)
    assert relay.stop() == 0
    sends = [s for s in memory_spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert len(sends) == 1, [s.name for s in sends]  # one transaction's rows: one batch
    (send,) = sends
    assert send.name == f"send {prefix}-order"
    assert send.attributes is not None
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.destination.name"] == prefix + "-order"
    assert send.attributes["messaging.batch.message_count"] == 4
    # one partition for the whole batch: the span names it
    assert send.attributes["messaging.destination.partition.id"] == "0"
    assert [(link.context.trace_id, link.context.span_id) for link in send.links] == [
        (c.trace_id, c.span_id) for c in contexts]
    ids = {r.header("id").decode() for r in records if r.header("traceparent")}  # type: ignore[union-attr]
    assert {link.attributes["messaging.message.id"] for link in send.links  # type: ignore[index]
            } == ids
    # the child of the first row's context, so a batch of one request's rows is in its trace
    assert send.parent is not None and send.parent.span_id == contexts[0].span_id
    assert send.status.is_ok


def test_server_span_continues_the_callers_trace(memory_spans: InMemorySpanExporter) -> None:
    with tracing.server_span("POST /orders", TRACEPARENT, {"http.route": "/orders"}):
        inside = tracing.current_traceparent()
    with trace.get_tracer("framework").start_as_current_span("request"), \
            tracing.server_span("POST /orders", TRACEPARENT):
        pass  # a framework's span is current: nothing new
    (span, framework) = memory_spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER and framework.name == "request"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert inside is not None and inside.split("-")[1] == TRACEPARENT.split("-")[1]


def test_process_span_marks_a_failed_handler(memory_spans: InMemorySpanExporter) -> None:
    headers = {"traceparent": TRACEPARENT.encode(), "eventType": b"Created"}
    with pytest.raises(RuntimeError), tracing.process_span("t", 2, 9, "e-1", headers, "h", "k"):
        raise RuntimeError("boom")
    (span,) = memory_spans.get_finished_spans()
    assert not span.status.is_ok
    assert span.events and span.events[0].name == "exception"
    assert span.attributes is not None
    assert span.attributes["messaging.destination.partition.id"] == "2"
    assert span.attributes["outbox.event_type"] == "Created"
    assert span.context is not None and f"{span.context.trace_id:032x}" == TRACEPARENT[3:35]


def test_forwarded_request_is_the_child_of_the_process_span(
        memory_spans: InMemorySpanExporter) -> None:
    import uuid as uuid_mod
    from types import SimpleNamespace

    from consumers.forward_http import RouteClient
    from consumers.message import IncomingEvent

    event = IncomingEvent(uuid_mod.uuid4(), "Created", {}, "k", "t", 0, 1, 0,
                          {"traceparent": TRACEPARENT.encode()})
    client: Any = SimpleNamespace(route=SimpleNamespace(headers={}))
    assert RouteClient.headers(client, event)["traceparent"] == TRACEPARENT  # outside a span
    with tracing.process_span("t", 0, 1, str(event.id), event.headers, "forward"):
        inside = RouteClient.headers(client, event)["traceparent"]
    (span,) = memory_spans.get_finished_spans()
    assert span.context is not None
    assert inside == f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-" \
                     f"{span.context.trace_flags:02x}"
    assert inside.split("-")[1] == TRACEPARENT.split("-")[1]


def test_every_relay_process_exports_its_queued_spans_before_it_exits(
        outbox_url: str, kafka_bootstrap: str, prefix: str) -> None:
    """A relay process forked by --processes ends with os._exit, past the SDK's exit hook:
    it shuts the provider down first, so a BatchSpanProcessor's queued spans are exported
    (bench/traced_outbox.py: an SDK provider whose exporter counts, per process)."""
    create_topic(kafka_bootstrap, prefix + "-order", 1)
    with psycopg.connect(outbox_url) as conn:
        for n in range(6):
            publish(conn, Event("order", f"o-{n}", "Created", {"n": n}, traceparent=TRACEPARENT))
    env = {**os.environ, "OUTBOX_DATABASE_URL": outbox_url,
           "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": prefix + "-{aggregatetype}"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, os.path.join(root, "bench", "traced_outbox.py"), "relay", "run",
         "--processes", "2", "--log-level", "warning"],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert len(consume_all(kafka_bootstrap, prefix + "-order", expected=6, timeout=30)) == 6
    finally:
        proc.send_signal(2)  # SIGINT: drain and stop
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    counts = exported_counts(err)
    assert len(counts) == 3, err  # the parent and its two relay processes
    assert proc.pid in counts, err
    assert sum(counts.values()) >= 1, err  # the send spans, from the processes that sent them


# bench/traced_outbox.py's report; print() writes the text and its newline in two writes,
# so the two children, shutting down at the same moment, can interleave on the shared
# stderr pipe ("...(pid 7841)traced_outbox: 2 spans exported (pid 7842)\n\n"): found
# anywhere in the text, not at the start of a line.
EXPORTED = re.compile(r"traced_outbox: (\d+) spans exported \(pid (\d+)\)")


def exported_counts(stderr: str) -> dict[int, int]:
    """Spans exported per pid, from the ``traced_outbox:`` reports in ``stderr``."""
    return {int(pid): int(count) for count, pid in EXPORTED.findall(stderr)}


def test_exported_counts_are_read_from_reports_written_into_one_another() -> None:
    """The stderr of the run that failed once under load: three reports, two on one line."""
    stderr = ("traced_outbox: 1 spans exported (pid 7841)traced_outbox: 2 spans exported "
              "(pid 7842)\n\ntraced_outbox: 0 spans exported (pid 7826)\n")
    assert exported_counts(stderr) == {7841: 1, 7842: 2, 7826: 0}
