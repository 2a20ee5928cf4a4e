"""The event catalogue of consumer applications: which event types each topic carries,
with their JSON Schemas (from the handlers' pydantic models), and the same as an AsyncAPI
3.0 document.

In the AsyncAPI document a topic is a channel (its ``address``), an event type a message
(``name``), and every message has the toolkit's record contract as its headers (``id``,
``eventType``, ``correlationId``, ``causationId``, ``traceparent``, ``tracestate``) and its
Kafka key (the aggregate id) as a string. Each application is a ``receive`` operation per
channel, named after its consumer group. A fallback handler (any event type) is a message ``*``
whose payload is any JSON object. Pure: nothing here touches a service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from consumers.runtime import Consumer

ANY_TYPE = "*"
_NAME = re.compile(r"[^\w.\-]")
_KAFKA_BINDING = "0.5.0"

RECORD_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The record contract of every event the outbox toolkit publishes.",
    "required": ["id", "eventType"],
    "properties": {
        "id": {"type": "string", "format": "uuid",
               "description": "The event id (UUIDv7); consumers dedupe on it."},
        "eventType": {"type": "string", "description": "The event type."},
        "correlationId": {"type": "string", "description": "The business flow it belongs to."},
        "causationId": {"type": "string", "description": "The id of the event that caused it."},
        "traceparent": {"type": "string", "description": "W3C trace context."},
        "tracestate": {"type": "string", "description": "W3C trace context: vendor data."},
    },
}


@dataclass(frozen=True)
class Entry:
    """One registered event type on one topic."""

    group: str
    topic: str
    event_type: str  # ANY_TYPE for a fallback handler
    handler: str
    model: type[BaseModel] | None

    def schema(self) -> dict[str, Any]:
        """The payload's JSON Schema (``$defs`` inline), or any JSON object."""
        if self.model is None:
            return {"type": "object", "description": "any JSON object (no model declared)"}
        return self.model.model_json_schema(by_alias=True)


def entries(apps: list[Consumer]) -> list[Entry]:
    """Every registration of ``apps``, by topic then event type (fallbacks last)."""
    found = [Entry(app.group, topic, event_type or ANY_TYPE, reg.name, reg.model)
             for app in apps for (topic, event_type), reg in app.handlers.items()]
    return sorted(found, key=lambda e: (e.topic, e.event_type == ANY_TYPE, e.event_type,
                                        e.group))


def catalogue(apps: list[Consumer]) -> dict[str, dict[str, Any]]:
    """``{topic: {event type: {"groups", "handlers", "model", "schema"}}}``."""
    result: dict[str, dict[str, Any]] = {}
    for entry in entries(apps):
        slot = result.setdefault(entry.topic, {}).setdefault(entry.event_type, {
            "groups": [], "handlers": [], "model": _model_name(entry.model),
            "schema": entry.schema()})
        slot["groups"].append(entry.group)
        slot["handlers"].append(entry.handler)
    return result


def _model_name(model: type[BaseModel] | None) -> str | None:
    return None if model is None else f"{model.__module__}.{model.__qualname__}"


def _ident(text: str) -> str:
    """A component or channel id AsyncAPI accepts (``^[\\w\\d.\\-_]+$``)."""
    return _NAME.sub("_", text) or "_"


def asyncapi(apps: list[Consumer], title: str, version: str = "1.0.0",
             description: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``apps``."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {"OutboxRecordHeaders": RECORD_HEADERS}
    for entry in entries(apps):
        channel_id = _ident(entry.topic)
        channel = channels.setdefault(channel_id, {"address": entry.topic, "messages": {}})
        message_id = _message(entry, messages, schemas)
        name = _ident(entry.event_type if entry.event_type != ANY_TYPE else "any")
        channel["messages"][name] = {"$ref": f"#/components/messages/{message_id}"}
        operation = operations.setdefault(_ident(f"{entry.group}.{channel_id}"), {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"},
            "summary": f"consumer group {entry.group} reads {entry.topic}", "messages": []})
        ref = {"$ref": f"#/channels/{channel_id}/messages/{name}"}
        if ref not in operation["messages"]:
            operation["messages"].append(ref)
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    return {"asyncapi": "3.0.0", "info": info, "defaultContentType": "application/json",
            "channels": channels, "operations": operations,
            "components": {"messages": messages, "schemas": schemas}}


def _message(entry: Entry, messages: dict[str, Any], schemas: dict[str, Any]) -> str:
    """Add ``entry``'s message (and its payload's schemas) to the components; its id."""
    if entry.model is None:
        payload: dict[str, Any] = entry.schema()
        message_id = _ident(f"{entry.topic}.any" if entry.event_type == ANY_TYPE
                            else f"{entry.topic}.{entry.event_type}")
    else:
        schema_id = _ident(entry.model.__name__)
        found = entry.model.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}")
        for name, sub in found.pop("$defs", {}).items():
            schemas.setdefault(_ident(name), sub)
        schemas.setdefault(schema_id, found)
        payload = {"$ref": f"#/components/schemas/{schema_id}"}
        message_id = _ident(entry.event_type)
        if message_id in messages and messages[message_id]["payload"] != payload:
            message_id = _ident(f"{entry.topic}.{entry.event_type}")
    messages.setdefault(message_id, {
        "name": entry.event_type,
        "title": entry.event_type if entry.event_type != ANY_TYPE else "any other event type",
        "contentType": "application/json",
        "headers": {"$ref": "#/components/schemas/OutboxRecordHeaders"},
        "payload": payload,
        "bindings": {"kafka": {"key": {"type": "string", "description": "the aggregate id"},
                               "bindingVersion": _KAFKA_BINDING}},
    })
    return message_id


__all__ = ["ANY_TYPE", "RECORD_HEADERS", "Entry", "asyncapi", "catalogue", "entries"]
