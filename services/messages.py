"""What a saga handler needs from an incoming event, independent of the consumer runtime."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID


class SagaMessage(Protocol):
    """An event as a handler sees it: its id and its JSON payload."""

    @property
    def id(self) -> UUID: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...


def field(msg: SagaMessage, name: str) -> Any:
    """A required payload field, or a ``ValueError`` naming it (the runtime dead-letters it)."""
    try:
        return msg.payload[name]
    except KeyError:
        raise ValueError(f"event {msg.id} has no {name!r} in its payload") from None
