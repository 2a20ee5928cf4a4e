"""The forwarder's pure rules, without services: configuration, templates, answers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from consumers.forward_config import build_config
from consumers.forward_http import DONE, REJECT, RETRY, classify, parse_retry_after, retry_delay
from consumers.forward_template import TemplateError, render_body
from consumers.message import IncomingEvent
from outbox.errors import ConfigurationError

ROUTE = {"url": "http://127.0.0.1:9000/hook", "topics": ["order-events"]}


def config(route: dict[str, Any] | None = None, env: dict[str, str] | None = None,
           **top: Any) -> Any:
    return build_config({**top, "routes": {"r": {**ROUTE, **(route or {})}}}, "f.toml",
                        env or {})


def error_of(route: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             **top: Any) -> str:
    with pytest.raises(ConfigurationError) as info:
        config(route, env, **top)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_secrets_from_the_environment() -> None:
    cfg = config({"headers": {"Authorization": "Bearer ${env:TOKEN}"},
                  "url": "https://h/x?key=${env:KEY}"}, env={"TOKEN": "abc123", "KEY": "k9k9"})
    [route] = cfg.routes
    assert (cfg.group, cfg.workers, route.method, route.timeout) == (
        "outbox-forward", 8, "POST", 10.0)
    assert route.headers == {"Authorization": "Bearer abc123"}
    assert route.url == "https://h/x?key=k9k9"
    described = str(route.describe())
    assert "abc123" not in described and "k9k9" not in described
    assert "${env:TOKEN}" in described
    assert route.scrub("failed for https://h/x?key=k9k9") == "failed for https://h/x?key=***"


@pytest.mark.parametrize(("route", "top", "expected"), [
    ({"timeout": 0}, {}, "f.toml: routes.r.timeout: Input should be greater than 0 (got 0)"),
    ({"timeout": "fast"}, {}, "routes.r.timeout: Input should be a valid number"),
    ({"url": "localhost:9000"}, {}, "routes.r.url: 'localhost:9000' is not an http"),
    ({"topics": []}, {}, "routes.r.topics: List should have at least 1 item"),
    ({"method": "GET"}, {}, "routes.r.method: 'GET' is not one of POST, PUT, PATCH"),
    ({"timout": 3}, {}, "routes.r.timout: Extra inputs are not permitted"),
    ({"headers": {"Idempotency-Key": "x"}}, {}, "is set by the forwarder"),
    ({"headers": {"X": "${env:MISSING}"}}, {}, "routes.r.headers.X: environment variable "
                                               "MISSING is not set"),
    ({"body": {"a": "${payload.x}", "b": ["${bogus}"]}}, {}, "unknown placeholder ${bogus}"),
    ({}, {"workers": 0}, "workers: Input should be greater than or equal to 1"),
    ({}, {"grup": "x"}, "grup: Extra inputs are not permitted"),
])
def test_each_problem_is_one_line_naming_the_field(route: dict[str, Any], top: dict[str, Any],
                                                  expected: str) -> None:
    assert expected in error_of(route, **top)


def test_a_secret_in_a_bad_url_is_not_echoed() -> None:
    message = error_of({"url": "ftp://${env:T}@h"}, env={"T": "supersecret"})
    assert "supersecret" not in message


def test_no_route_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="no route configured"):
        build_config({}, "f.toml", {})


def incoming(payload: dict[str, Any], key: str | None = "o-1") -> IncomingEvent:
    return IncomingEvent(id=uuid.UUID(int=7), type="OrderCreated", payload=payload, key=key,
                         topic="order-events", partition=2, offset=41, timestamp_ms=1000,
                         headers={"correlationId": b"c-1"})


def test_render_body() -> None:
    event = incoming({"orderId": "o-1", "items": [{"sku": "A", "n": 2}], "amount": "9.50"})
    assert render_body(None, event) == (b'{"orderId":"o-1","items":[{"sku":"A","n":2}],'
                                        b'"amount":"9.50"}')
    body = render_body({"orderId": "${payload.orderId}", "first": "${payload.items.0}",
                        "sku": "sku ${payload.items.0.sku} x${payload.items.0.n}",
                        "where": ["${topic}", "${partition}", "${offset}"],
                        "c": "${correlation_id}", "t": "${traceparent}", "fixed": 3}, event)
    assert body == (b'{"orderId":"o-1","first":{"sku":"A","n":2},"sku":"sku A x2",'
                    b'"where":["order-events",2,41],"c":"c-1","t":null,"fixed":3}')
    with pytest.raises(TemplateError, match=r"no \$\{payload.customer\}"):
        render_body({"c": "${payload.customer}"}, event)
    with pytest.raises(TemplateError):
        render_body({"c": "${payload.items.5}"}, event)


@pytest.mark.parametrize(("status", "outcome"), [
    (200, DONE), (201, DONE), (204, DONE), (408, RETRY), (429, RETRY), (500, RETRY),
    (503, RETRY), (599, RETRY), (None, RETRY), (400, REJECT), (401, REJECT), (404, REJECT),
    (409, REJECT), (422, REJECT), (301, REJECT), (304, REJECT)])
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(status) == outcome


def test_retry_after() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-3", now) == 0.0
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    [route] = config({"backoff_base": 1, "backoff_cap": 8, "retry_after_cap": 60}).routes
    assert retry_delay(route, 1, 3600) == 60  # capped
    assert retry_delay(route, 1, 2.5) == 2.5
    assert 4 <= retry_delay(route, 4, None) <= 8  # equal jitter around the capped step
