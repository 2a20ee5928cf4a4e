"""``publish()``: add events to the caller's open transaction.

The event rows commit or roll back with the caller's business rows; nothing here commits.
Many events in one call are one round trip: a single statement that first takes the
per-aggregate advisory locks (sorted, so two publishers cannot deadlock on each other's
aggregates) and then inserts every row. Taking the lock before the row draws its ``seq``
is what makes ``seq`` order equal commit order per aggregate (docs/ordering.md).

What is accepted can be delivered: the rules of :mod:`outbox.rules` (text fields, the topic
from the template, a JSON object payload, payload and record size) are checked before the
statement is sent, and the SQL function ``outbox_publish`` applies the same ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pydantic import BaseModel
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from outbox import rules, tracing
from outbox.errors import EventValidationError, PayloadTooLargeError
from outbox.locks import AGGREGATE_LOCK_NAMESPACE
from outbox.rules import MAX_FIELD_LENGTH
from outbox.settings import Settings, qualified
from outbox.uuid7 import uuid7

# The locks come first: the insert's rows are only produced once the InitPlan
# `(select count(*) from locks)` has run, i.e. once every lock is held.
INSERT_EVENTS = """
with locks as (
    select pg_advisory_xact_lock(%(namespace)s, key)
      from (select distinct hashtext(k) as key
              from unnest(%(lock_keys)s::text[]) as k
             order by 1) as sorted_keys
)
insert into {table}
       (id, aggregatetype, aggregateid, type, payload, created_at,
        correlation_id, causation_id, traceparent, tracestate)
select e.id, e.aggregatetype, e.aggregateid, e.type, e.payload::jsonb, e.created_at,
       e.correlation_id, e.causation_id, e.traceparent, e.tracestate
  from unnest(%(ids)s::uuid[], %(aggregatetypes)s::text[], %(aggregateids)s::text[],
              %(types)s::text[], %(payloads)s::text[], %(created)s::timestamp[],
              %(correlation_ids)s::text[], %(causation_ids)s::text[],
              %(traceparents)s::text[], %(tracestates)s::text[])
       as e(id, aggregatetype, aggregateid, type, payload, created_at,
            correlation_id, causation_id, traceparent, tracestate)
 where (select count(*) from locks) >= 0
"""


# One event (the common case) skips the arrays: the lock function is the statement's only
# FROM item, so it runs before the single row reaches the insert. Measured about three
# times cheaper in the database than the unnest form for one row (bench/publish.py).
INSERT_ONE_EVENT = """
insert into {table}
       (id, aggregatetype, aggregateid, type, payload, created_at,
        correlation_id, causation_id, traceparent, tracestate)
select %(id)s, %(aggregatetype)s, %(aggregateid)s, %(type)s, %(payload)s::jsonb,
       %(created)s, %(correlation_id)s, %(causation_id)s, %(traceparent)s, %(tracestate)s
  from pg_advisory_xact_lock(%(namespace)s, hashtext(%(lock_key)s))
"""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Event:
    """One event for the outbox. ``id`` (UUIDv7) and ``created_at`` (naive UTC) default to now."""

    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Mapping[str, Any] | BaseModel
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None
    id: uuid.UUID = field(default_factory=uuid7)
    created_at: dt.datetime = field(default_factory=_utc_now)
    # W3C tracestate (vendor data of the trace in traceparent), the `tracestate` header;
    # at most 512 printable ASCII characters.
    tracestate: str | None = None

    @classmethod
    def of(cls, model: BaseModel, *, aggregate_id: str, aggregate_type: str | None = None,
           event_type: str | None = None, correlation_id: str | None = None,
           causation_id: str | None = None, traceparent: str | None = None) -> Event:
        """The event carrying ``model`` as its payload (serialised by alias).

        ``event_type`` defaults to the model's ``__event_type__`` class variable, else its
        class name; ``aggregate_type`` to its ``__aggregate_type__`` (required one way or
        the other)::

            class OrderCreated(BaseModel):
                __aggregate_type__: ClassVar[str] = "order"
                order_id: str

            publish(session, Event.of(OrderCreated(order_id=oid), aggregate_id=oid))
        """
        if not isinstance(model, BaseModel):
            raise TypeError(f"Event.of() takes a pydantic model, got {type(model).__name__}")
        kind = type(model)
        aggregate = aggregate_type or getattr(kind, "__aggregate_type__", None)
        if not aggregate:
            raise EventValidationError("aggregate_type", f"is not given and {kind.__name__} "
                                       "has no __aggregate_type__ class variable")
        return cls(aggregate_type=aggregate, aggregate_id=aggregate_id,
                   event_type=event_type or event_type_of(kind), payload=model,
                   correlation_id=correlation_id, causation_id=causation_id,
                   traceparent=traceparent)


def event_type_of(model: type[BaseModel]) -> str:
    """The event type a model is published as: ``__event_type__``, else its class name."""
    declared = getattr(model, "__event_type__", None)
    return declared if isinstance(declared, str) and declared else model.__name__


@functools.cache
def _default_settings() -> Settings:
    # Read the environment once: publish() sits on every business transaction's path.
    return Settings()


@functools.cache
def _insert_sql(schema: str, table: str, single: bool) -> str:
    template = INSERT_ONE_EVENT if single else INSERT_EVENTS
    return template.format(table=qualified(schema, table))


def _check_text(name: str, value: str | None, required: bool) -> int:
    """The UTF-8 size of a text field (-1 when unset), or the error naming ``name``."""
    if value is None:
        if required:
            raise EventValidationError(name, rules.missing())
        return -1
    if not isinstance(value, str):
        raise EventValidationError(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise EventValidationError(name, rules.empty())
    if len(value) > MAX_FIELD_LENGTH:
        raise EventValidationError(name, rules.too_long(len(value)))
    size = _utf8_size(name, value)
    if "\x00" in value:
        raise EventValidationError(name, "contains a NUL character, which PostgreSQL refuses")
    return size


def _utf8_size(name: str, value: str) -> int:
    """``value``'s size in UTF-8, or the error naming ``name`` if it has a lone surrogate."""
    if value.isascii():  # the common case: nothing to encode
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise EventValidationError(
            name, f"is not valid UTF-8 (lone surrogate at position {exc.start})") from None


# One encoder for every payload (json.dumps would build one per call with these options).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The JSON type of a pydantic model's output, by its first character.
_JSON_TYPE_BY_FIRST = {"[": "array", '"': "string", "t": "boolean", "f": "boolean",
                       "n": "null"}


def _encode_payload(event: Event, text_sizes: list[int], s: Settings) -> str:
    """The payload as compact JSON, checked against the payload and record limits."""
    payload = event.payload
    if isinstance(payload, BaseModel):
        text = payload.model_dump_json(by_alias=True)
        if not text.startswith("{"):
            raise EventValidationError("payload", rules.not_an_object(
                _JSON_TYPE_BY_FIRST.get(text[:1], "number")))
    else:
        if not isinstance(payload, Mapping):
            raise EventValidationError("payload", rules.not_an_object(
                rules.json_type_name(payload)))
        try:
            text = _JSON.encode(payload)
        except (TypeError, ValueError) as exc:
            raise EventValidationError("payload", f"is not JSON-serialisable: {exc}") from None
    size = _utf8_size("payload", text)
    if "\x00" in text:
        raise EventValidationError("payload", "contains a NUL character, which PostgreSQL "
                                              "refuses")
    if "\\u0000" in text:
        raise EventValidationError("payload", "contains a NUL character (\\u0000), which "
                                              "PostgreSQL's jsonb refuses")
    size = rules.stored_json_size(text, size, signed_exponents=not isinstance(payload,
                                                                              BaseModel))
    if size > s.max_payload_bytes:
        raise PayloadTooLargeError("payload", rules.payload_too_large(size,
                                                                      s.max_payload_bytes))
    if event.tracestate is not None:  # checked ASCII (_validate): one byte a character
        size += len("tracestate") + len(event.tracestate)
    if size + rules.MAX_KEY_AND_HEADER_BYTES <= s.max_record_bytes:
        return text  # fits whatever the key and headers are
    # text_sizes: the UTF-8 sizes of TEXT_FIELDS, in order (aggregate_id is the key).
    record = rules.record_size(text_sizes[1], size, text_sizes[2:])
    if record > s.max_record_bytes:
        raise PayloadTooLargeError("payload", rules.record_too_large(record,
                                                                     s.max_record_bytes))
    return text


def _validate(ev: Event, s: Settings) -> list[int]:
    """Check the text fields and the topic; their UTF-8 sizes in TEXT_FIELDS order."""
    if not isinstance(ev, Event):
        raise TypeError(f"publish() takes Event objects, got {type(ev).__name__}")
    sizes = [_check_text("aggregate_type", ev.aggregate_type, required=True),
             _check_text("aggregate_id", ev.aggregate_id, required=True),
             _check_text("event_type", ev.event_type, required=True),
             _check_text("correlation_id", ev.correlation_id, required=False),
             _check_text("causation_id", ev.causation_id, required=False),
             _check_text("traceparent", ev.traceparent, required=False)]
    if ev.tracestate is not None:
        _check_tracestate(ev.tracestate)
    problem = rules.topic_problem(ev.aggregate_type, s.topic_template)
    if problem is not None:
        raise EventValidationError("aggregate_type", problem)
    return sizes


def _check_tracestate(value: object) -> None:
    """W3C's tracestate: printable ASCII, at most tracing.MAX_TRACESTATE_LENGTH long."""
    if not isinstance(value, str):
        raise EventValidationError("tracestate", f"must be a string, got {type(value).__name__}")
    if len(value) > tracing.MAX_TRACESTATE_LENGTH:
        raise EventValidationError("tracestate", f"is {len(value)} characters long, at most "
                                                 f"{tracing.MAX_TRACESTATE_LENGTH} allowed")
    if not (value.isascii() and value.isprintable()):
        raise EventValidationError("tracestate", "must be printable ASCII (W3C trace context)")


def _params(events: Sequence[Event], s: Settings) -> dict[str, Any]:
    if len(events) == 1:
        return _one_event_params(events[0], s)
    payloads = [_encode_payload(e, _validate(e, s), s) for e in events]
    return {
        "namespace": AGGREGATE_LOCK_NAMESPACE,
        "lock_keys": [f"{e.aggregate_type}:{e.aggregate_id}" for e in events],
        "ids": [e.id for e in events],
        "aggregatetypes": [e.aggregate_type for e in events],
        "aggregateids": [e.aggregate_id for e in events],
        "types": [e.event_type for e in events],
        "payloads": payloads,
        "created": [_naive_utc(e.created_at) for e in events],
        "correlation_ids": [e.correlation_id for e in events],
        "causation_ids": [e.causation_id for e in events],
        "traceparents": [e.traceparent for e in events],
        "tracestates": [e.tracestate for e in events],
    }


def _naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value


def _one_event_params(ev: Event, s: Settings) -> dict[str, Any]:
    sizes = _validate(ev, s)
    return {
        "namespace": AGGREGATE_LOCK_NAMESPACE,
        "lock_key": f"{ev.aggregate_type}:{ev.aggregate_id}",
        "id": ev.id,
        "aggregatetype": ev.aggregate_type,
        "aggregateid": ev.aggregate_id,
        "type": ev.event_type,
        "payload": _encode_payload(ev, sizes, s),
        "created": _naive_utc(ev.created_at),
        "correlation_id": ev.correlation_id,
        "causation_id": ev.causation_id,
        "traceparent": ev.traceparent,
        "tracestate": ev.tracestate,
    }


def _traced(events: list[Event]) -> list[Event]:
    """``events`` with the current span's ``traceparent`` and ``tracestate`` where the
    caller set neither (:mod:`outbox.tracing`; unchanged without OpenTelemetry or outside
    a span)."""
    current = tracing.current_context()
    if current is None:
        return events
    parent, state = current
    return [dataclasses.replace(e, traceparent=parent, tracestate=state)
            if isinstance(e, Event) and e.traceparent is None and e.tracestate is None
            else e for e in events]


def _prepare(events: Sequence[Event], settings: Settings | None) -> tuple[str, dict[str, Any]]:
    s = settings if settings is not None else _default_settings()
    query = _insert_sql(s.db_schema, s.outbox_table, len(events) == 1)
    return query, _params(events, s)


SyncTarget = Session | SAConnection | psycopg.Connection[Any]
AsyncTarget = AsyncSession | SAAsyncConnection | psycopg.AsyncConnection[Any]


def publish(target: SyncTarget, event: Event, *more: Event,
            settings: Settings | None = None) -> list[Event]:
    """Add events to ``target``'s open transaction (Session, Connection or psycopg connection).

    Never commits: the events commit or roll back with the caller's transaction. An event
    without ``traceparent`` and ``tracestate`` gets the current OpenTelemetry span's, if any. Raises
    :class:`~outbox.errors.EventValidationError` (nothing written) for an invalid event.
    """
    events = _traced([event, *more])
    query, params = _prepare(events, settings)
    if isinstance(target, Session):
        target.connection().exec_driver_sql(query, params)
    elif isinstance(target, SAConnection):
        target.exec_driver_sql(query, params)
    elif isinstance(target, psycopg.Connection):
        target.execute(query, params)
    else:
        raise TypeError(f"publish() needs a SQLAlchemy Session or Connection or a psycopg "
                        f"Connection, got {type(target).__name__}")
    return events


async def publish_async(target: AsyncTarget, event: Event, *more: Event,
                        settings: Settings | None = None) -> list[Event]:
    """:func:`publish` for an ``AsyncSession``, async ``Connection`` or psycopg async one."""
    events = _traced([event, *more])
    query, params = _prepare(events, settings)
    if isinstance(target, AsyncSession):
        conn = await target.connection()
        await conn.exec_driver_sql(query, params)
    elif isinstance(target, SAAsyncConnection):
        await target.exec_driver_sql(query, params)
    elif isinstance(target, psycopg.AsyncConnection):
        await target.execute(query, params)
    else:
        raise TypeError(f"publish_async() needs an AsyncSession, an async Connection or a "
                        f"psycopg AsyncConnection, got {type(target).__name__}")
    return events


__all__ = ["Event", "event_type_of", "publish", "publish_async"]
