"""One small HTTP server per consumer: ``/metrics`` (Prometheus) and ``/health``.

``/health`` answers 200 while the consume loop is turning and the database answers, and
503 otherwise, with a one-line JSON reason, so an orchestrator can restart a stuck member.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthCheck = Callable[[], tuple[bool, str]]


def serve(registry: CollectorRegistry, health: HealthCheck, port: int,
          host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` on ``host:port`` in a daemon thread.

    ``port=0`` picks a free port (read it from ``server.server_address``). Call
    ``shutdown()`` on the returned server to stop it.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server dispatches GET to this name
            if self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif self.path == "/health":
                ok, reason = health()
                body = json.dumps({"status": "ok" if ok else "unhealthy", "reason": reason})
                self._send(200 if ok else 503, "application/json", body.encode())
            else:
                self._send(404, "text/plain", b"try /metrics or /health\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the consumer's own logs

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="consumer-http").start()
    return server
