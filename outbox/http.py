"""One small HTTP server per daemon: ``/metrics`` (Prometheus) and ``/health``.

Used by the relay and the consumers. ``/health`` answers 200 or 503 with a JSON body the
daemon supplies, so an orchestrator can restart a stuck process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# () -> (healthy?, JSON-serialisable details)
HealthProbe = Callable[[], tuple[bool, dict[str, object]]]


def serve(registry: CollectorRegistry, health: HealthProbe, host: str, port: int,
          name: str = "outbox-http") -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` on a daemon thread; returns the server.

    ``port=0`` picks a free port (read it from ``server.server_address``); ``shutdown()``
    stops it.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server dispatches GET to this name
            if self.path.startswith("/metrics"):
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif self.path.startswith("/health"):
                ok, info = health()
                self._send(200 if ok else 503, "application/json", json.dumps(info).encode())
            else:
                self._send(404, "text/plain", b"not found: try /metrics or /health\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would drown the daemon's own logs

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
