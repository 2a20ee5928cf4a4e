"""The verdict on one message before any handler runs: the event and its handler, or the
reason it goes to the dead-letter topic.

:func:`route` never raises: whatever goes wrong while decoding or routing a message is
that message's fault, so it becomes a :class:`~consumers.dlq.Failure` — the consumer
dead-letters it and goes on, instead of crashing on it at every restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from consumers.dlq import Failure
from consumers.handlers import Registration
from consumers.message import IncomingEvent, PoisonMessageError, Received, decode

Routes = dict[tuple[str, str | None], Registration]


@dataclass(frozen=True)
class Routed:
    """A decoded event and the registration that handles it."""

    event: IncomingEvent
    registration: Registration
    value: BaseModel | None = None  # the payload validated by the registration's model


Verdict = Routed | Failure


def _poison(reason: str, detail: str) -> Failure:
    return Failure(reason, PoisonMessageError(reason, detail), attempts=1)


def route(msg: Received, routes: Routes, max_bytes: int | None) -> Verdict:
    """Decode ``msg``, find its handler, validate its payload model; never raises."""
    try:
        event = decode(msg, max_bytes)
    except PoisonMessageError as poison:
        return Failure(poison.reason, poison, attempts=1)
    except Exception as exc:  # a bug in decoding must not stop the consumer either
        return Failure("decode-failed", exc, attempts=1)
    registration = routes.get((event.topic, event.type)) or routes.get((event.topic, None))
    if registration is None:
        return _poison("unknown-event-type", f"no handler for event type {event.type!r} on "
                                             f"{event.topic!r} and no fallback handler")
    if registration.model is None:
        return Routed(event, registration)
    try:
        value = registration.model.model_validate(event.payload)
    except ValidationError as exc:
        return _poison("invalid-payload", str(exc))
    except Exception as exc:  # a validator that raised something else, RecursionError
        return Failure("invalid-payload", exc, attempts=1)
    return Routed(event, registration, value)
