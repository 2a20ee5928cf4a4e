"""A real local HTTP server for the forwarder's tests: records every request, answers as
a test's script says (status, headers, body, delay), and can go down and come back up
on the same port."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.launcher import free_port


@dataclass(frozen=True)
class Received:
    """One request as the endpoint saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = Callable[[Received, int], Reply]  # (request, how often this key was seen before)


def always_ok(_request: Received, _seen: int) -> Reply:
    return Reply()


class Endpoint:
    """``url`` answers ``script(request, times_seen_before)``; ``received`` lists requests."""

    def __init__(self, script: Script = always_ok, port: int | None = None) -> None:
        self.script = script
        self.port = port or free_port()
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Endpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with endpoint.lock:
                    endpoint.connections.add(self.connection)

            def finish(self) -> None:
                with endpoint.lock:
                    endpoint.connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                request = Received(self.command, self.path,
                                   {k.lower(): v for k, v in self.headers.items()}, body,
                                   time.monotonic())
                with endpoint.lock:
                    seen = sum(1 for r in endpoint.received if r.key == request.key)
                    endpoint.received.append(request)
                reply = endpoint.script(request, seen)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            do_POST = do_PUT = do_PATCH = _handle  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        # Kept-alive connections outlive the listening socket: cut them, as a crash would.
        with self.lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def keys(self) -> list[str]:
        with self.lock:
            return [r.key for r in self.received]

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json for r in self.received]
