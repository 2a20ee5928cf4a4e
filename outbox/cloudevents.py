"""CloudEvents' Kafka protocol binding, binary mode: the ``ce_*`` headers on every record.

Optional (``OUTBOX_CLOUDEVENTS=binary``; default ``off``). The record stays what
docs/contracts.md pins (key, JSON value, the toolkit's headers); binary mode adds, after
them, in this order:

- ``ce_id``: the event id; ``ce_type``: the event type; ``ce_time``: ``created_at`` in
  RFC 3339 UTC with milliseconds (``2026-12-01T20:16:10.123Z``, the record's timestamp);
- ``ce_specversion``: ``1.0``; ``ce_source``: ``OUTBOX_CLOUDEVENTS_SOURCE`` (default
  ``/outbox``); ``content-type``: ``application/json``.

The relay builds them with :func:`record_headers`; the rendered Debezium configuration
(:func:`debezium_config`) makes Kafka Connect write the same bytes: the first three from
the row's columns (the outbox ``EventRouter``'s additional placement of ``id``, ``type``,
and two columns of schema version 5: ``ce_time``, set from ``created_at`` by a trigger, as
the EventRouter needs ``created_at`` itself as a number for the record timestamp, and
``ce_specversion``, default ``1.0``), the other constants with Kafka's ``InsertHeader``
transform (which parses its literal: hence :func:`source_problem`). A consumer takes either form
(:func:`event_id_of`): the toolkit's ``id`` header, else ``ce_id``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from outbox.record import StoredRow, stored_headers
from outbox.rows import CREATED_MS, ID, TYPE
from outbox.settings import Settings

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
INSERT_HEADER = "org.apache.kafka.connect.transforms.InsertHeader"
# The columns Debezium places as headers, in the relay's order.
PLACEMENT = ("id:header:ce_id,type:header:ce_type,ce_time:header:ce_time,"
             "ce_specversion:header:ce_specversion")
# The constant headers, as (transform alias, header).
# (InsertHeader parses its literal: "1.0" would become the number 1, written back as "1",
# so the spec version comes from a column with that default.)
CONSTANTS = (("ceSource", "ce_source"), ("ceContentType", "content-type"))

HeadersOf = Callable[[StoredRow], list[tuple[str, str]]]


def format_time(created_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds (Kafka Connect's form)."""
    seconds, ms = divmod(created_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


_LITERAL_START = re.compile(r"[A-Za-z/.]")


def source_problem(source: str) -> str | None:
    """Why ``source`` cannot be ``ce_source`` (None if it can): a URI reference that
    Kafka Connect's literal parser keeps as text (not a number, boolean, array or map)."""
    if not source.strip() or not source.isprintable() or " " in source:
        return "must be a URI reference without spaces, e.g. /shop/orders"
    if not _LITERAL_START.match(source) or source.lower() in ("true", "false", "null"):
        return ("must start with a letter, '/' or '.' (e.g. /shop/orders or "
                "urn:shop:orders), so Kafka Connect keeps it as text")
    return None


def record_headers(settings: Settings) -> HeadersOf:
    """What the relay puts in a stored row's headers: :func:`outbox.record.stored_headers`
    itself when CloudEvents is off, else those plus the ``ce_*`` headers."""
    if settings.cloudevents == "off":
        return stored_headers
    constants = [("ce_specversion", SPECVERSION), ("ce_source", settings.cloudevents_source),
                 ("content-type", CONTENT_TYPE)]

    def with_cloudevents(row: StoredRow) -> list[tuple[str, str]]:
        headers = stored_headers(row)
        headers += [("ce_id", row[ID]), ("ce_type", row[TYPE]),
                    ("ce_time", format_time(row[CREATED_MS])), *constants]
        return headers

    return with_cloudevents


def debezium_config(settings: Settings, config: dict[str, str]) -> dict[str, str]:
    """The rendered connector ``config`` with the same ``ce_*`` headers as the relay's
    (unchanged when CloudEvents is off)."""
    if settings.cloudevents == "off":
        return config
    out = dict(config)
    placement = "transforms.outbox.table.fields.additional.placement"
    out[placement] = f"{out[placement]},{PLACEMENT}"
    values = {"ce_source": settings.cloudevents_source, "content-type": CONTENT_TYPE}
    for alias, header in CONSTANTS:
        out["transforms"] += f",{alias}"
        out[f"transforms.{alias}.type"] = INSERT_HEADER
        out[f"transforms.{alias}.header"] = header
        out[f"transforms.{alias}.value.literal"] = values[header]
    return out


def event_id_of(headers: Mapping[str, Any]) -> Any:
    """The event id header of either form: ``id``, else CloudEvents' ``ce_id``."""
    found = headers.get("id")
    return found if found is not None else headers.get("ce_id")


__all__ = ["CONTENT_TYPE", "SPECVERSION", "debezium_config", "event_id_of", "format_time",
           "record_headers", "source_problem"]
