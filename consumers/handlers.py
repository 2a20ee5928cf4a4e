"""Handlers: what may be registered, and calling one so that a handler that did not run is
never recorded as having run.

The runtime calls handlers synchronously, inside the batch's database transaction. A
coroutine function (``async def``) or a generator function would return at once without
running its body, and the inbox row would record an event that was never applied; they
are refused at registration (:func:`check_handler`). A sync callable that returns an
awaitable anyway fails at run time (:func:`call_handler`), like a handler that raised.
Both rules live here, so that async support can replace them in one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel
from sqlalchemy.orm import Session

from consumers.message import IncomingEvent

Handler = Callable[[Session, IncomingEvent], None]


@dataclass(frozen=True)
class Registration:
    """A handler and the payload model it validates against (if any)."""

    handler: Handler
    model: type[BaseModel] | None = None


def _name(fn: object) -> str:
    target = getattr(fn, "func", fn)  # functools.partial
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{name}"


def _runs_later(fn: Any) -> str | None:
    """Why calling ``fn`` would not run its body now (async or generator), or None."""
    # An object whose class defines ``async def __call__`` is a coroutine function too.
    for candidate in (fn, inspect.getattr_static(type(fn), "__call__", None)):
        if inspect.iscoroutinefunction(candidate):
            return "is a coroutine function (async def)"
        if inspect.isasyncgenfunction(candidate):
            return "is an async generator function"
        if inspect.isgeneratorfunction(candidate):
            return "is a generator function (it yields)"
    return None


def check_handler(fn: object) -> Handler:
    """``fn`` if the runtime can call it; a ``TypeError`` naming it otherwise."""
    if not callable(fn):
        raise TypeError(f"handler {fn!r} is not callable")
    why = _runs_later(fn)
    if why is not None:
        raise TypeError(
            f"handler {_name(fn)} {why}: the consumer calls handlers synchronously inside "
            "the database transaction, so its body would not run before the event is "
            "recorded as processed; make it a plain function (def)")
    return cast(Handler, fn)


def call_handler(handler: Callable[[Session, IncomingEvent], object], session: Session,
                 event: IncomingEvent) -> None:
    """Run ``handler``; a result that is an awaitable or a generator is a failure."""
    result = handler(session, event)
    if result is None:
        return
    if inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(
            result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" warning: we say it ourselves
        raise TypeError(
            f"handler {_name(handler)} returned {type(result).__name__} instead of running: "
            "it was not applied; handlers must do their work before they return")
