"""What makes an event publishable: the one definition of the rules.

``publish()`` (Python) applies them before it sends its statement; the SQL function
``outbox_publish`` (installed by migration 0004, ``outbox/sql/publish.sql``) is rendered
from the constants here and raises the same messages; the relay checks the record size and
the topic again before it produces. ``tests/core/test_publish_sql.py`` runs random events
through both publish paths and requires the same verdict and the same message.

The rules, in the order they are checked:

1. ``aggregate_type``, ``aggregate_id``, ``event_type``: present, not blank (Python's
   ``str.strip`` whitespace), at most :data:`MAX_FIELD_LENGTH` characters;
   ``correlation_id``, ``causation_id``, ``traceparent``: optional, at most as long.
2. ``aggregate_type`` routes to a topic Kafka accepts (``topic_template`` applied).
3. ``payload`` is a JSON object.
4. ``payload`` as compact JSON is at most ``max_payload_bytes``.
5. The Kafka record (key, value and headers, names included) is at most
   ``max_record_bytes``, whose default fits librdkafka's and the broker's default
   ``message.max.bytes``.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import functools
import json
import re
from decimal import Decimal
from typing import Any

from outbox.record import invalid_topic_reason, topic_for

MAX_FIELD_LENGTH = 255

# librdkafka's producer refuses a record whose key, value and headers (names and values)
# add up to more than 999,950 bytes with its default message.max.bytes=1000000 (measured
# with 5 headers; the rest is framing), and the broker's default message.max.bytes is
# 1048588: 999,000 fits both with room to spare.
DEFAULT_MAX_RECORD_BYTES = 999_000

# (field, required) in the order they are checked; the SQL function checks the same.
TEXT_FIELDS = (("aggregate_type", True), ("aggregate_id", True), ("event_type", True),
               ("correlation_id", False), ("causation_id", False), ("traceparent", False))

# Every character str.strip() removes: a required field made only of these is "empty".
# Rendered into the SQL function so both paths agree on what blank means.
# Spelled out: computing it (every code point's str.isspace()) cost ~50 ms of every
# process's start-up; tests/core/test_rules_constants.py checks it still matches.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003"
              "\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

# The record's headers: name and the Python field whose value it carries (id is a uuid,
# 36 characters of text). outbox/record.py builds them in this order.
HEADERS = (("eventType", "event_type"), ("correlationId", "correlation_id"),
           ("causationId", "causation_id"), ("traceparent", "traceparent"))
ID_HEADER_BYTES = len("id") + 36
# The most bytes a record's key and headers can add to its value (every text field at its
# length limit, 4 bytes a character): a value this much under the limit needs no count.
MAX_KEY_AND_HEADER_BYTES = (ID_HEADER_BYTES + 4 * MAX_FIELD_LENGTH
                            + sum(len(name) + 4 * MAX_FIELD_LENGTH for name, _ in HEADERS))

# jsonb prints numbers in plain notation (1e-07 -> 0.0000001, 1e+22 -> 1 and 22 zeros) and
# has no negative zero; compact text without such a number token (after ':', ',' or '[')
# has the size jsonb will give it. A string that merely looks like one costs a parse.
_NUMBERS_DIFFER = re.compile(r"[:,\[]-?[0-9]+(?:\.[0-9]+)?[eE]|[:,\[]-0(?:\.0+)?[,}\]]")

JSON_TYPE_NAMES = {dict: "object", list: "array", tuple: "array", str: "string",
                   bool: "boolean", int: "number", float: "number", type(None): "null"}


def missing() -> str:
    return "is missing"


def empty() -> str:
    return "is empty"


def too_long(length: int) -> str:
    return f"is {length} characters long; the limit is {MAX_FIELD_LENGTH}"


def not_an_object(json_type: str) -> str:
    return f"must be a JSON object, got {json_type}"


def payload_too_large(size: int, limit: int) -> str:
    return f"is {size} bytes as JSON; the limit is {limit} bytes (OUTBOX_MAX_PAYLOAD_BYTES)"


def record_too_large(size: int, limit: int) -> str:
    return (f"makes a Kafka record of {size} bytes with its key and headers; the limit is "
            f"{limit} bytes (OUTBOX_MAX_RECORD_BYTES)")


def json_type_name(value: Any) -> str:
    """The JSON type a Python value would be encoded as (its class name if none)."""
    for cls, name in JSON_TYPE_NAMES.items():
        if isinstance(value, cls):
            return name
    return type(value).__name__


@functools.lru_cache(maxsize=4096)
def topic_problem(aggregate_type: str, template: str) -> str | None:
    """Why the topic ``aggregate_type`` routes to cannot exist, as the problem of the field
    ``aggregate_type``; ``None`` if Kafka accepts it."""
    topic = topic_for(aggregate_type, template)
    if invalid_topic_reason(topic) is None:
        return None
    return (f"routes to topic '{topic}' (topic template '{template}'), which Kafka refuses: "
            "a topic name is 1 to 249 characters of [A-Za-z0-9._-], not '.' or '..'")


def _plain_number(token: str) -> str:
    """A JSON number token as jsonb prints it (numeric's plain notation, no -0)."""
    number = Decimal(token)
    text = format(number, "f")
    return text[1:] if number.is_zero() and text.startswith("-") else text


def _number_growth(text: str) -> int:
    """How many bytes longer jsonb prints the numbers of JSON ``text`` than ``text`` does."""
    growth = 0

    def number(token: str) -> int:
        nonlocal growth
        growth += len(_plain_number(token)) - len(token)
        return 0

    json.loads(text, parse_float=number, parse_int=number)
    return growth


def stored_json_size(text: str, size: int, signed_exponents: bool = False) -> int:
    """The size in bytes of compact JSON ``text`` (``size`` bytes) once stored as jsonb and
    printed compactly again, as the record's value will be.

    Key order and escapes come out the same length; only numbers can differ (exponents,
    negative zero), so the text is parsed only when it has such a number.
    ``signed_exponents``: the text comes from Python's json encoder, whose exponents always
    have a sign (``1e-07``, ``1e+22``), so two substring searches rule most texts out.
    """
    if signed_exponents and "e-" not in text and "e+" not in text and "-0.0" not in text:
        return size
    if _NUMBERS_DIFFER.search(text) is None:
        return size
    return size + _number_growth(text)


def record_size(aggregate_id_bytes: int, value_bytes: int, header_values: list[int]) -> int:
    """Bytes of a Kafka record: key, value, the ``id`` header, and each header of
    :data:`HEADERS` (name and value) whose UTF-8 size is given (``-1``: not set)."""
    size = aggregate_id_bytes + value_bytes + ID_HEADER_BYTES
    for (name, _field), value in zip(HEADERS, header_values, strict=True):
        if value >= 0:
            size += len(name) + value
    return size


def relay_record_size(key: str, value: str | None, headers: list[tuple[str, str]]) -> int:
    """:func:`record_size` of a record as the relay builds it (text parts, UTF-8 on the wire)."""
    size = len(key.encode()) + (0 if value is None else len(value.encode()))
    return size + sum(len(name) + len(text.encode()) for name, text in headers)


__all__ = ["DEFAULT_MAX_RECORD_BYTES", "HEADERS", "MAX_FIELD_LENGTH", "TEXT_FIELDS",
           "WHITESPACE", "json_type_name", "record_size", "relay_record_size",
           "stored_json_size", "topic_problem"]
