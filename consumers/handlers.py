"""Handlers: what may be registered, what each parameter is given, and calling one so that
a handler that did not run is never recorded as having run.

A handler asks for what it uses by annotating its parameters (resolved once, at
registration, by :func:`resolve`; a signature the runtime cannot serve is a ``TypeError``
there, naming the handler and the parameter):

=====================================  ==================================================
annotation                             what the handler gets
=====================================  ==================================================
``Session`` / ``AsyncSession``         the batch's session: its writes commit with the
                                       inbox row (``AsyncSession`` for ``async def``)
a pydantic ``BaseModel`` subclass      the payload, validated (a payload that does not
                                       validate is dead-lettered, ``invalid-payload``)
``IncomingEvent``                      the envelope: id, type, key, headers, position
``Publisher`` / ``AsyncPublisher``     publishes into the same transaction, through the
                                       consumer's outbox settings
=====================================  ==================================================

A parameter with a default and no such annotation keeps its default. The original form
``handler(session, event)`` still works unannotated (or annotated with something else,
such as a protocol): a two-parameter handler's unresolved first parameter is the session,
its second the event.

``async def`` handlers (or objects with ``async def __call__``, or partials of either) run
on the consumer's async engine and are awaited inside the transaction. Generator
functions would return before their body ran: refused. A sync handler that returns an
awaitable anyway did not do its work: a failure (:func:`call_sync`), never recorded.
"""

from __future__ import annotations

import enum
import functools
import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from consumers.message import IncomingEvent
from consumers.publisher import AsyncPublisher, Publisher
from outbox import tracing
from outbox.settings import Settings

Handler = Callable[..., Any]


class Give(enum.Enum):
    """What the runtime passes for one parameter."""

    SESSION = "session"
    EVENT = "event"
    MODEL = "model"
    PUBLISHER = "publisher"


_BY_TYPE_SYNC: dict[type, Give] = {Session: Give.SESSION, IncomingEvent: Give.EVENT,
                                   Publisher: Give.PUBLISHER}
_BY_TYPE_ASYNC: dict[type, Give] = {AsyncSession: Give.SESSION, IncomingEvent: Give.EVENT,
                                    AsyncPublisher: Give.PUBLISHER}
_LEGACY = (Give.SESSION, Give.EVENT)  # handler(session, event)


@dataclass(frozen=True)
class Registration:
    """A handler, how to call it, and the payload model it validates against (if any)."""

    handler: Handler
    model: type[BaseModel] | None = None
    is_async: bool = False
    positional: tuple[Give, ...] = _LEGACY
    keywords: tuple[tuple[str, Give], ...] = ()
    name: str = ""
    plain: bool = True  # called as handler(session, event)

    @property
    def gives(self) -> set[Give]:
        """Everything this handler asks for."""
        return set(self.positional) | {give for _, give in self.keywords}


def name_of(fn: object) -> str:
    """``module.qualname`` of a handler (of the function inside a partial)."""
    target = getattr(fn, "func", fn)  # functools.partial
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{name}"


def _runs_later(fn: Any) -> str | None:
    """Why calling ``fn`` would not run its body now (a generator), or None."""
    for candidate in (fn, inspect.getattr_static(type(fn), "__call__", None)):
        if inspect.isasyncgenfunction(candidate):
            return "is an async generator function"
        if inspect.isgeneratorfunction(candidate):
            return "is a generator function (it yields)"
    return None


def _is_async(fn: Any) -> bool:
    # An object whose class defines ``async def __call__`` is a coroutine function too.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        inspect.getattr_static(type(fn), "__call__", None))


def _hints(fn: Any) -> dict[str, Any]:
    """Resolved annotations of ``fn`` (of the function inside a partial, of ``__call__``)."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = type(target).__call__  # an object with __call__
    try:
        return typing.get_type_hints(target)
    except Exception:  # a name only imported under TYPE_CHECKING: treat as unannotated
        return {}


def _given(annotation: Any, table: dict[type, Give]) -> Give | None:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # ``X | None`` (a parameter with a None default): what X is
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else None
    if not isinstance(annotation, type):
        return None
    for kind, give in table.items():
        if issubclass(annotation, kind):
            return give
    if issubclass(annotation, BaseModel):
        return Give.MODEL
    return None


class HandlerSignatureError(TypeError):
    """A handler whose signature the runtime cannot serve (raised at registration)."""


def _refuse(fn: object, why: str) -> TypeError:
    return HandlerSignatureError(f"handler {name_of(fn)} {why}")


def resolve(fn: object, model: type[BaseModel] | None = None) -> Registration:
    """How to call ``fn``, read from its signature once; a ``TypeError`` if it cannot be."""
    if not callable(fn):
        raise TypeError(f"handler {fn!r} is not callable")
    why = _runs_later(fn)
    if why is not None:
        raise _refuse(fn, f"{why}: its body would not run before the event is recorded as "
                          "processed; make it a function (def or async def)")
    is_async = _is_async(fn)
    hints = _hints(fn)
    resolved = _resolved(fn, hints, is_async)
    model = _model(fn, hints, resolved, model)
    positional, keywords = _call_plan(fn, hints, resolved, is_async)
    return Registration(fn, model, is_async, positional, keywords, name_of(fn),
                        plain=positional == _LEGACY and not keywords)


Resolved = list[tuple[inspect.Parameter, Give | None]]


def _resolved(fn: Callable[..., Any], hints: dict[str, Any], is_async: bool) -> Resolved:
    """Each parameter with what its annotation asks for (None: nothing known)."""
    table, other = (_BY_TYPE_ASYNC, _BY_TYPE_SYNC) if is_async else (_BY_TYPE_SYNC,
                                                                      _BY_TYPE_ASYNC)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as exc:
        raise _refuse(fn, f"has no signature the runtime can read: {exc}") from None
    resolved: Resolved = []
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = hints.get(param.name)
        give = _given(annotation, table)
        if give is None and _given(annotation, other) in (Give.SESSION, Give.PUBLISHER):
            wanted = "AsyncSession or AsyncPublisher" if is_async else "Session or Publisher"
            raise _refuse(fn, f"is {'async' if is_async else 'sync'} but parameter "
                              f"{param.name!r} is annotated {_show(annotation)}: annotate it "
                              f"with {wanted}, or make the handler "
                              f"{'sync (def)' if is_async else 'async (async def)'}")
        resolved.append((param, give))
    if len(resolved) == 2 and all(p.default is p.empty for p, _ in resolved):
        # The original form handler(session, event), unannotated or annotated otherwise
        # (a protocol): position says what an unresolved parameter is.
        legacy: Resolved = [(p, g if g is not None else _LEGACY[i])
                            for i, (p, g) in enumerate(resolved)]
        if tuple(g for _, g in legacy) == _LEGACY:
            return legacy
    return resolved


def _model(fn: object, hints: dict[str, Any], resolved: Resolved,
           model: type[BaseModel] | None) -> type[BaseModel] | None:
    """The payload model: the one a parameter asks for, agreeing with ``model=``."""
    models = {hints[p.name] for p, g in resolved if g is Give.MODEL}
    if len(models) > 1:
        raise _refuse(fn, "asks for more than one payload model "
                          f"({', '.join(sorted(m.__name__ for m in models))}): one event, "
                          "one model")
    if not models:
        return model
    asked: type[BaseModel] = models.pop()
    if model is not None and model is not asked:
        raise _refuse(fn, f"takes {asked.__name__} but was registered with "
                          f"model={model.__name__}: drop one")
    return asked


def _call_plan(fn: object, hints: dict[str, Any], resolved: Resolved, is_async: bool
               ) -> tuple[tuple[Give, ...], tuple[tuple[str, Give], ...]]:
    """What goes in each positional argument, and what by keyword."""
    positional: list[Give] = []
    keywords: list[tuple[str, Give]] = []
    by_keyword = False  # once a parameter keeps its default, the rest go by name
    for param, give in resolved:
        if give is None:
            if param.default is not param.empty:
                by_keyword = True
                continue
            session, publisher = (("AsyncSession", "AsyncPublisher") if is_async
                                  else ("Session", "Publisher"))
            raise _refuse(fn, f"parameter {param.name!r} cannot be given (annotated "
                              f"{_show(hints.get(param.name))}): annotate it with {session}, "
                              f"a pydantic model, IncomingEvent or {publisher}, or give it "
                              "a default")
        if param.kind is param.KEYWORD_ONLY or by_keyword:
            if param.kind is param.POSITIONAL_ONLY:
                raise _refuse(fn, f"positional-only parameter {param.name!r} follows one "
                                  "the runtime does not give")
            keywords.append((param.name, give))
        else:
            positional.append(give)
    return tuple(positional), tuple(keywords)


def _show(annotation: Any) -> str:
    if annotation is None:
        return "with nothing"
    return getattr(annotation, "__name__", None) or repr(annotation)


def _argument(give: Give, session: Any, event: IncomingEvent, value: BaseModel | None,
              settings: Settings, is_async: bool) -> Any:
    if give is Give.SESSION:
        return session
    if give is Give.EVENT:
        return event
    if give is Give.MODEL:
        return value
    return (AsyncPublisher if is_async else Publisher)(session, settings, event)


def _arguments(reg: Registration, session: Any, event: IncomingEvent,
               value: BaseModel | None, settings: Settings) -> tuple[list[Any], dict[str, Any]]:
    args = [_argument(g, session, event, value, settings, reg.is_async) for g in reg.positional]
    kwargs = {name: _argument(g, session, event, value, settings, reg.is_async)
              for name, g in reg.keywords}
    return args, kwargs


def call_sync(reg: Registration, session: Session, event: IncomingEvent,
              value: BaseModel | None, settings: Settings) -> None:
    """Run a sync handler; a result that is an awaitable or a generator is a failure.

    With OpenTelemetry, in a ``process`` span continuing the record's trace
    (:func:`outbox.tracing.process_span`)."""
    if not tracing.enabled():
        return _call_sync(reg, session, event, value, settings)
    with _span(reg, event):
        return _call_sync(reg, session, event, value, settings)


def _span(reg: Registration, event: IncomingEvent) -> AbstractContextManager[None]:
    return tracing.process_span(event.topic, event.partition, event.offset, str(event.id),
                                event.headers, reg.name, event.key)


def _call_sync(reg: Registration, session: Session, event: IncomingEvent,
               value: BaseModel | None, settings: Settings) -> None:
    if reg.plain:
        result = reg.handler(session, event)  # the common form, without building lists
    else:
        args, kwargs = _arguments(reg, session, event, value, settings)
        result = reg.handler(*args, **kwargs)
    if result is None:
        return
    if inspect.isawaitable(result) or inspect.isgenerator(result) or inspect.isasyncgen(
            result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" warning: we say it ourselves
        raise TypeError(
            f"handler {reg.name} returned {type(result).__name__} instead of running: "
            "it was not applied; handlers must do their work before they return")


async def call_async(reg: Registration, session: AsyncSession, event: IncomingEvent,
                     value: BaseModel | None, settings: Settings) -> None:
    """Run a handler inside an async transaction: awaited, or (a sync handler of the same
    consumer) called on the session's sync side, in the same transaction."""
    if not reg.is_async:
        await session.run_sync(lambda sync: call_sync(reg, sync, event, value, settings))
        return
    args, kwargs = _arguments(reg, session, event, value, settings)
    if not tracing.enabled():
        await reg.handler(*args, **kwargs)
        return
    with _span(reg, event):
        result: Awaitable[object] = reg.handler(*args, **kwargs)
        await result


__all__ = ["Give", "Handler", "HandlerSignatureError", "Registration", "call_async",
           "call_sync", "name_of", "resolve"]
