"""Pure parts of the consumer, without services: verdicts and dead letters.

The same behaviour is proven against the real broker in test_poison.py and the fuzz test;
these pin the details fast.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest
from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, field_validator
from sqlalchemy.orm import Session

from consumers.dlq import (
    KEEP_HEADER_BYTES,
    KEEP_KEY_BYTES,
    KEEP_VALUE_BYTES,
    Failure,
    bare_letter,
    dead_letter_headers,
    full_letter,
    truncated_letter,
)
from consumers.handlers import Registration
from consumers.message import IncomingEvent, PoisonMessageError, Received
from consumers.routing import Routed, Routes, route

Headers = list[tuple[str, str | bytes | None]]


def received(value: bytes | None, key: bytes | None = b"k",
             headers: Headers | None = None) -> Received:
    eid = str(uuid.uuid4()).encode()
    default: Headers = [("id", eid), ("eventType", b"Thing")]
    msg = Message(topic="t", partition=1, offset=7, key=key, value=value, timestamp=(1, 99),
                  headers=headers if headers is not None else default)
    return Received.of(msg)


def noop(session: Session, event: IncomingEvent) -> None:
    return None


ROUTES: Routes = {("t", "Thing"): Registration(noop)}


def test_a_good_message_is_routed_to_its_handler() -> None:
    verdict = route(received(b'{"n": 1}'), ROUTES, 1024)
    assert isinstance(verdict, Routed) and verdict.event.payload == {"n": 1}


@pytest.mark.parametrize(("value", "reason"), [
    (b"x" * 2000, "too-large"),
    (('{"a":' * 10_000 + "1" + "}" * 10_000).encode(), "too-large"),
    (b"\xff", "undecodable-value"),
    (b"[1]", "undecodable-value"),
    (None, "empty-value"),
])
def test_poison_verdicts(value: bytes | None, reason: str) -> None:
    verdict = route(received(value), ROUTES, 1024)
    assert isinstance(verdict, Failure) and verdict.reason == reason


def test_json_too_deep_to_decode_is_undecodable_not_a_crash() -> None:
    deep = ('{"a":' * 10_000 + "1" + "}" * 10_000).encode()
    verdict = route(received(deep), ROUTES, 1 << 20)
    assert isinstance(verdict, Failure) and verdict.reason == "undecodable-value"
    assert "deep" in str(verdict.exception)


def test_a_model_validator_that_raises_anything_is_invalid_payload() -> None:
    class Broken(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def boom(cls, value: int) -> int:
            raise KeyError("a bug in the model")

    routes: Routes = {("t", "Thing"): Registration(noop, Broken)}
    verdict = route(received(b'{"n": 1}'), routes, 1024)
    assert isinstance(verdict, Failure) and verdict.reason == "invalid-payload"


@given(key=st.binary(max_size=64) | st.none(), value=st.binary(max_size=256) | st.none(),
       headers=st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=16) | st.none()),
                        max_size=5))
def test_route_never_raises(key: bytes | None, value: bytes | None, headers: Headers) -> None:
    verdict = route(received(value, key, headers), ROUTES, 512)
    assert isinstance(verdict, Routed | Failure)


FAIL = Failure("too-large", PoisonMessageError("too-large", "big"), 1)


def test_a_truncated_letter_keeps_the_head_size_and_hash_and_the_contract_headers() -> None:
    value = bytes(range(256)) * 1000
    msg = received(value, key=b"K" * 5000)
    letter = truncated_letter(msg, "g", FAIL)
    headers = dict(letter.headers)
    assert letter.topic == "t.dlq"
    assert letter.value == value[:KEEP_VALUE_BYTES] and letter.key == b"K" * KEEP_KEY_BYTES
    assert headers["dlq.truncated"] == b"value,key"
    assert headers["dlq.original.size"] == str(len(value)).encode()
    assert headers["dlq.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    for name in ("dlq.original.topic", "dlq.original.partition", "dlq.original.offset",
                 "dlq.original.timestamp", "dlq.consumer.group", "dlq.reason",
                 "dlq.exception.class", "dlq.exception.message", "dlq.attempts"):
        assert headers[name], name
    assert headers["dlq.original.offset"] == b"7" and headers["id"]


def test_headers_over_the_budget_are_cut_in_order() -> None:
    many: Headers = [("id", b"1"), *((f"h{i}", b"v" * 1000) for i in range(40))]
    letter = truncated_letter(received(b"{}", headers=many), "g", FAIL)
    kept = [n for n, _ in letter.headers if not n.startswith("dlq.")]
    assert kept[0] == "id" and 1 < len(kept) < len(many)
    assert sum(len(n) + 1000 for n in kept[1:]) <= KEEP_HEADER_BYTES
    assert dict(letter.headers)["dlq.truncated"] == b"headers"


def test_a_full_letter_keeps_repeated_headers_and_drops_old_diagnostics() -> None:
    headers: Headers = [("id", b"a"), ("x", b"1"), ("x", b"2"), ("dlq.reason", b"old"),
                        ("n", None)]
    letter = full_letter(received(b"v", headers=headers), "g", FAIL)
    assert letter.headers[:4] == [("id", b"a"), ("x", b"1"), ("x", b"2"), ("n", None)]
    assert dict(letter.headers)["dlq.reason"] == b"too-large"


def test_a_bare_letter_carries_nothing_of_the_original() -> None:
    letter = bare_letter(received(b"secret value"), "g", FAIL)
    assert (letter.key, letter.value) == (None, None)
    assert not [n for n, _ in letter.headers if not n.startswith("dlq.")]


def test_an_exception_whose_str_raises_still_makes_a_letter() -> None:
    class NastyError(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    letter = full_letter(received(b"v"), "g", Failure("handler-failed", NastyError(), 3))
    assert b"cannot be shown" in (dict(letter.headers)["dlq.exception.message"] or b"")


def test_dead_letter_headers_also_take_a_confluent_message() -> None:
    """For callers that build a Message of their own (a forwarder dead-lettering an event)."""
    msg = Message(topic="t", partition=2, offset=9, value=b"v", headers=[("id", b"1")],
                  timestamp=(1, 5))
    headers = dict(dead_letter_headers(msg, "g", FAIL))
    assert headers["id"] == b"1" and headers["dlq.original.offset"] == b"9"
