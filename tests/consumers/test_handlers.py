"""Handler signatures, resolved once at registration (pure: no services).

What each parameter is given, which signatures are refused (and how the error reads),
and the rule that a handler which did not run is a failure. The same handlers run
against the real services in the contract suite (test_contract.py).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import uuid
from typing import Any, ClassVar, Protocol

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from consumers import AsyncPublisher, IncomingEvent, Publisher
from consumers.handlers import Give, call_async, call_sync, resolve
from outbox.errors import EventValidationError
from outbox.publish import Event
from outbox.settings import Settings


class Thing(BaseModel):
    __aggregate_type__: ClassVar[str] = "thing"
    n: int


class Other(BaseModel):
    m: int


class Message(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


def event(payload: dict[str, Any] | None = None) -> IncomingEvent:
    return IncomingEvent(uuid.uuid4(), "Thing", payload or {"n": 1}, "k", "t", 0, 5, 0,
                         {"correlationId": b"corr-1"})


# --- what parameters get ----------------------------------------------------------------

def test_the_original_form_is_called_with_session_and_event() -> None:
    def legacy(session, event):  # type: ignore[no-untyped-def]
        return None

    def protocol(session: Session, msg: Message) -> None:
        return None

    for fn in (legacy, protocol):
        reg = resolve(fn)
        assert reg.positional == (Give.SESSION, Give.EVENT) and reg.plain


def test_parameters_are_given_by_annotation_in_any_order() -> None:
    seen: dict[str, object] = {}

    def handler(thing: Thing, publisher: Publisher, envelope: IncomingEvent,
                session: Session) -> None:
        seen.update(thing=thing, publisher=publisher, envelope=envelope, session=session)

    reg = resolve(handler)
    assert reg.model is Thing and not reg.is_async and not reg.plain
    incoming, value = event(), Thing(n=1)
    call_sync(reg, "SESSION", incoming, value, Settings())  # type: ignore[arg-type]
    assert seen["thing"] is value and seen["envelope"] is incoming
    assert seen["session"] == "SESSION"
    publisher = seen["publisher"]
    assert isinstance(publisher, Publisher) and publisher.cause is incoming


def test_a_handler_asks_only_for_what_it_uses() -> None:
    calls: list[Thing] = []

    def only_model(thing: Thing) -> None:
        calls.append(thing)

    def nothing() -> None:
        calls.append(Thing(n=0))

    call_sync(resolve(only_model), None, event(), Thing(n=3), Settings())  # type: ignore[arg-type]
    call_sync(resolve(nothing), None, event(), None, Settings())  # type: ignore[arg-type]
    assert [c.n for c in calls] == [3, 0]


def test_defaults_keyword_only_parameters_and_partials() -> None:
    got: dict[str, object] = {}

    def handler(gateway: str, thing: Thing, *, retries: int = 3,
                envelope: IncomingEvent) -> None:
        got.update(gateway=gateway, thing=thing, retries=retries, envelope=envelope)

    reg = resolve(functools.partial(handler, "gw"))
    assert reg.positional == (Give.MODEL,)
    assert reg.keywords == (("envelope", Give.EVENT),)
    incoming = event()
    call_sync(reg, None, incoming, Thing(n=1), Settings())  # type: ignore[arg-type]
    assert got == {"gateway": "gw", "thing": Thing(n=1), "retries": 3, "envelope": incoming}


def test_parameters_after_one_that_keeps_its_default_go_by_name() -> None:
    got: dict[str, object] = {}

    def optional(thing: Thing, retries: int = 3, envelope: IncomingEvent | None = None,
                 session: Session | None = None) -> None:
        got.update(thing=thing, retries=retries)

    def annotated(thing: Thing, retries: int = 3, *, envelope: IncomingEvent) -> None:
        got.update(retries=retries, envelope=envelope)

    reg = resolve(annotated)
    assert reg.positional == (Give.MODEL,) and reg.keywords == (("envelope", Give.EVENT),)
    incoming = event()
    call_sync(reg, None, incoming, Thing(n=1), Settings())  # type: ignore[arg-type]
    assert got == {"retries": 3, "envelope": incoming}
    reg = resolve(optional)  # X | None is given as X
    assert reg.keywords == (("envelope", Give.EVENT), ("session", Give.SESSION))


def test_an_object_with_call_is_resolved_from_its_call() -> None:
    class Handler:
        def __call__(self, thing: Thing) -> None:
            return None

    class AsyncHandler:
        async def __call__(self, thing: Thing, session: AsyncSession) -> None:
            return None

    assert resolve(Handler()).positional == (Give.MODEL,)
    reg = resolve(AsyncHandler())
    assert reg.is_async and reg.positional == (Give.MODEL, Give.SESSION)


def test_model_given_at_registration_and_by_annotation_must_agree() -> None:
    def handler(thing: Thing) -> None:
        return None

    assert resolve(handler, Thing).model is Thing
    with pytest.raises(TypeError, match=r"test_handlers.*handler takes Thing but was "
                                        r"registered with model=Other"):
        resolve(handler, Other)


# --- refused at registration, with the reason --------------------------------------------

async def async_with_sync_session(session: Session, thing: Thing) -> None:
    return None


def sync_with_async_session(session: AsyncSession) -> None:
    return None


async def async_with_sync_publisher(publisher: Publisher) -> None:
    return None


def two_models(a: Thing, b: Other) -> None:
    return None


def unknown(thing: Thing, clock: float) -> None:
    return None


def generator_handler(session: Session, event: IncomingEvent) -> object:
    yield None


async def async_generator(session: AsyncSession, event: IncomingEvent) -> object:
    yield None


@pytest.mark.parametrize(("fn", "message"), [
    (async_with_sync_session, r"async_with_sync_session is async but parameter 'session' is "
                              r"annotated Session: annotate it with AsyncSession"),
    (sync_with_async_session, r"sync_with_async_session is sync but parameter 'session' is "
                              r"annotated AsyncSession: annotate it with Session"),
    (async_with_sync_publisher, r"parameter 'publisher' is annotated Publisher"),
    (two_models, r"asks for more than one payload model \(Other, Thing\)"),
    (unknown, r"unknown parameter 'clock' cannot be given \(annotated float\)"),
    (generator_handler, r"generator_handler is a generator function"),
    (async_generator, r"async_generator is an async generator function"),
    (42, r"handler 42 is not callable"),
])
def test_bad_signatures_fail_at_registration_saying_what_to_do(fn: object,
                                                              message: str) -> None:
    with pytest.raises(TypeError, match=message):
        resolve(fn)


# --- running ----------------------------------------------------------------------------

async def async_handler(session: AsyncSession, event: IncomingEvent) -> None:
    return None


def test_a_returned_coroutine_is_a_failure_and_is_closed() -> None:
    coroutine = async_handler(None, None)  # type: ignore[arg-type]

    def sneaky(session: Session, event: IncomingEvent) -> object:
        return coroutine

    reg = resolve(sneaky)
    with pytest.raises(TypeError, match="sneaky returned coroutine instead of running"):
        call_sync(reg, None, event(), None, Settings())  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED  # no warning later


def test_async_handlers_are_awaited_with_their_arguments() -> None:
    got: list[object] = []

    async def handler(thing: Thing, publisher: AsyncPublisher) -> None:
        await asyncio.sleep(0)
        got.extend([thing, publisher])

    reg = resolve(handler)
    assert reg.is_async
    asyncio.run(call_async(reg, None, event(), Thing(n=2), Settings()))  # type: ignore[arg-type]
    assert got[0] == Thing(n=2) and isinstance(got[1], AsyncPublisher)


# --- the typed publish helper -------------------------------------------------------------

def test_event_of_a_model_takes_its_types_and_serialises_by_alias() -> None:
    ev = Event.of(Thing(n=1), aggregate_id="a1", correlation_id="c")
    assert (ev.aggregate_type, ev.event_type, ev.aggregate_id) == ("thing", "Thing", "a1")
    assert ev.payload == Thing(n=1) and ev.correlation_id == "c"
    assert Event.of(Other(m=1), aggregate_id="a", aggregate_type="o",
                    event_type="Renamed").event_type == "Renamed"
    with pytest.raises(EventValidationError, match="Other has no __aggregate_type__"):
        Event.of(Other(m=1), aggregate_id="a")


def test_a_publisher_carries_the_incoming_ids_into_what_it_publishes() -> None:
    incoming = event()
    publisher = Publisher(None, Settings(), incoming)  # type: ignore[arg-type]
    [ev] = publisher._events((Thing(n=1),), "k1")
    assert ev.causation_id == str(incoming.id) and ev.correlation_id == "corr-1"
    own = Event("thing", "k", "Thing", {"n": 1}, correlation_id="mine", causation_id="x")
    assert publisher._events((own,), None) == [own]
    with pytest.raises(TypeError, match="needs aggregate_id="):
        publisher._events((Thing(n=1),), None)
    assert json.loads(Thing(n=1).model_dump_json()) == {"n": 1}
