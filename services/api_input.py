"""What the order API accepts: a bounded body, strings PostgreSQL can store, and errors that
name the field without echoing what was sent.

- :class:`BodyLimit` answers 413 to a body over the limit: at once when its
  ``Content-Length`` says so, and as soon as the bytes read pass the limit when it is
  streamed without one — so a 200 MB request never takes 200 MB of memory. Before the
  connection closes, what the client is still sending is read and dropped (at most
  :data:`DRAIN_BYTES`, for :data:`DRAIN_SECONDS`): closing a socket with unread data makes
  the kernel reset the connection and throw away the response not sent yet, so the
  client saw "connection reset" or a cut-off body instead of the 413 (seen in CI).
- :data:`Text` refuses NUL, other control characters and unpaired surrogates: PostgreSQL
  cannot store NUL in text nor encode a lone surrogate (both were a 500), and no control
  character belongs in an id or a SKU.
- :func:`validation_error` is the 422 body: for each problem its location, a message cut
  to :data:`MAX_MESSAGE` characters and its type — never the input, which FastAPI's
  default handler echoes whole.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 64 * 1024  # an order of 100 lines is ~10 KB
MAX_MESSAGE = 200
MAX_ERRORS = 20
# After a refused body: how much of the rest is read and dropped, and for how long, so the
# connection closes without a reset (and a client that sends forever is cut off).
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _storable(value: str) -> str:
    if _UNSTORABLE.search(value):
        raise ValueError("must not contain NUL, control characters or unpaired surrogates")
    return value


Text = Annotated[str, AfterValidator(_storable)]
"""A string with no NUL, control character or unpaired surrogate (else 422)."""


def _cut(text: object, limit: int) -> str:
    value = str(text)
    return value if len(value) <= limit else value[:limit] + "…"


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """422 naming what is wrong and where, without the input."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{"loc": [_cut(part, 64) for part in error.get("loc", ())],
               "msg": _cut(error.get("msg", ""), MAX_MESSAGE), "type": error.get("type")}
              for error in errors[:MAX_ERRORS]]
    return JSONResponse({"detail": detail}, status_code=422)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        # the request has a body, and it has not been read to its end yet
        unread = (declared not in (None, b"0")) or b"transfer-encoding" in headers

        async def finish(message: Message) -> None:
            """``send``, but the response's last part waits until the body is drained."""
            if (unread and message["type"] == "http.response.body"
                    and not message.get("more_body", False)):
                await send({**message, "more_body": True})
                await _drain(receive)
                await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(finish)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen, unread
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI passes an HTTPException raised while reading the body on to
                    # its handler (any other exception would become a 400).
                    raise HTTPException(413, self._detail)
                unread = bool(message.get("more_body", False))
            else:
                unread = False  # the client is gone
            return message

        await self.app(scope, limited, finish)

    @property
    def _detail(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail": "' + self._detail.encode() + b'"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a request body: at most DRAIN_BYTES, for DRAIN_SECONDS."""
    deadline = time.monotonic() + DRAIN_SECONDS
    dropped = 0
    while dropped <= DRAIN_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), left)
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        dropped += len(message.get("body", b""))
