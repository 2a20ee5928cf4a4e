"""Request bodies of ``outbox forward``: the event payload, or a JSON template over the event.

A template is any JSON value (a TOML table in the configuration file). A string that is
exactly one placeholder, ``"${payload.orderId}"``, becomes the value found there with its
JSON type; a placeholder inside a longer string is replaced by its text. Placeholders:

| placeholder | value |
|---|---|
| ``${payload}``, ``${payload.a.b}``, ``${payload.items.0.sku}`` | the payload, or a field in it |
| ``${id}``, ``${type}``, ``${key}``, ``${topic}`` | event id, event type, Kafka key, topic |
| ``${partition}``, ``${offset}``, ``${timestamp}`` | where the record was (timestamp in ms) |
| ``${correlation_id}``, ``${causation_id}``, ``${traceparent}`` | the toolkit's headers |

A placeholder that names nothing in an event (a missing payload field) makes the event
undeliverable: it is dead-lettered with reason ``template-failed``, never posted half-filled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from consumers.message import IncomingEvent

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
WHOLE = re.compile(r"^\$\{([^}]*)\}$")
ROOTS = ("payload", "id", "type", "key", "topic", "partition", "offset", "timestamp",
         "correlation_id", "causation_id", "traceparent")


class TemplateError(Exception):
    """An event lacks what the body template asks for."""


def check_template(template: Any, where: str = "body") -> None:
    """Raise ``ValueError`` naming the first placeholder that can never resolve."""
    if isinstance(template, str):
        for path in PLACEHOLDER.findall(template):
            root = path.split(".", 1)[0]
            if root not in ROOTS or (root != "payload" and "." in path):
                raise ValueError(f"{where}: unknown placeholder ${{{path}}}: use one of "
                                 + ", ".join(f"${{{r}}}" for r in ROOTS)
                                 + " (payload fields as ${payload.field})")
    elif isinstance(template, Mapping):
        for key, value in template.items():
            check_template(value, f"{where}.{key}")
    elif isinstance(template, list):
        for index, value in enumerate(template):
            check_template(value, f"{where}.{index}")


def _lookup(event: IncomingEvent, path: str) -> Any:
    root, _, rest = path.partition(".")
    if root != "payload":
        return {"id": str(event.id), "type": event.type, "key": event.key,
                "topic": event.topic, "partition": event.partition, "offset": event.offset,
                "timestamp": event.timestamp_ms, "correlation_id": event.correlation_id,
                "causation_id": event.causation_id, "traceparent": event.traceparent}[root]
    value: Any = event.payload
    for part in rest.split(".") if rest else []:
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"the event has no ${{{path}}} (body template)")
    return value


def _render(template: Any, event: IncomingEvent) -> Any:
    if isinstance(template, str):
        whole = WHOLE.match(template)
        if whole:
            return _lookup(event, whole.group(1))

        def text(match: re.Match[str]) -> str:
            value = _lookup(event, match.group(1))
            return value if isinstance(value, str) else json.dumps(value)

        return PLACEHOLDER.sub(text, template)
    if isinstance(template, Mapping):
        return {key: _render(value, event) for key, value in template.items()}
    if isinstance(template, list):
        return [_render(value, event) for value in template]
    return template


def render_body(template: Any, event: IncomingEvent) -> bytes:
    """The request body for ``event``: its payload when ``template`` is None."""
    value = dict(event.payload) if template is None else _render(template, event)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = ["TemplateError", "check_template", "render_body"]
