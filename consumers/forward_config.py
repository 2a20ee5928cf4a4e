"""What ``outbox forward`` delivers where: routes from a TOML file or CLI flags, validated.

    group = "outbox-forward"            # the consumer group (the inbox's dedupe key)

    [routes.inventory]
    url = "http://legacy:9000/functions/v1/process-inventory"
    topics = ["order-events"]
    event_types = ["OrderCreated"]      # absent: every event type of the topics
    timeout = 10                        # seconds per request
    headers = { Authorization = "Bearer ${env:LEGACY_TOKEN}" }
    body = { orderId = "${payload.orderId}", correlationId = "${correlation_id}" }

Secrets come from the environment (``${env:NAME}`` in ``url`` and header values), are
resolved once at start and never printed: :meth:`Route.describe` masks them. Every
problem is one line naming the field (``forward.toml: routes.inventory.timeout: ...``),
raised as :class:`~outbox.errors.ConfigurationError`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from consumers.forward_template import check_template
from outbox.errors import ConfigurationError

ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
ROUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the forwarder on every request; a route may not override them.
RESERVED_HEADERS = frozenset({"idempotency-key", "outbox-event-type", "outbox-correlation-id",
                              "traceparent", "tracestate", "content-length", "host",
                              "transfer-encoding"})
METHODS = ("POST", "PUT", "PATCH")


def resolve_env(value: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """``value`` with each ``${env:NAME}`` replaced; returns it and the secrets used."""
    secrets: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ValueError(f"environment variable {name} is not set")
        secrets.append(env[name])
        return env[name]

    return ENV_REF.sub(substitute, value), secrets


class RouteModel(BaseModel):
    """One route as written in the file (before environment references are resolved)."""

    model_config = ConfigDict(extra="forbid")
    url: str
    topics: list[str] = Field(min_length=1)
    event_types: list[str] | None = None
    method: str = "POST"
    timeout: float = Field(default=10.0, gt=0, le=300)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    backoff_base: float = Field(default=0.5, gt=0)
    backoff_cap: float = Field(default=60.0, gt=0)
    retry_after_cap: float = Field(default=300.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{ENV_REF.sub('***', value)!r} is not an http:// or https:// URL")
        return value

    @field_validator("topics", "event_types")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not name.strip() for name in value):
            raise ValueError("names must not be empty")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value.upper() not in METHODS:
            raise ValueError(f"{value!r} is not one of {', '.join(METHODS)}")
        return value.upper()

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the forwarder on every request")
        return value

    @field_validator("body")
    @classmethod
    def _body(cls, value: Any) -> Any:
        check_template(value)
        return value


class ForwardModel(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")
    group: str = Field(default="outbox-forward", min_length=1, max_length=255)
    workers: int = Field(default=8, ge=1, le=64)
    concurrency: int = Field(default=8, ge=1, le=256)
    park_table: str = Field(default="forward_parked", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    routes: dict[str, RouteModel] = Field(default_factory=dict)


class Route:
    """A validated route with its secrets resolved. ``describe()`` is safe to print."""

    def __init__(self, name: str, model: RouteModel, env: dict[str, str]) -> None:
        self.name = name
        self.model = model
        self.method = model.method
        self.timeout = model.timeout
        self.max_attempts = model.max_attempts
        self.backoff_base = model.backoff_base
        self.backoff_cap = max(model.backoff_cap, model.backoff_base)
        self.retry_after_cap = model.retry_after_cap
        self.topics = list(model.topics)
        self.event_types = frozenset(model.event_types) if model.event_types else None
        self.body = model.body
        self.secrets: list[str] = []
        self.url = self._resolve(model.url, "url", env)
        self.headers = {name_: self._resolve(value, f"headers.{name_}", env)
                        for name_, value in model.headers.items()}

    def _resolve(self, value: str, where: str, env: dict[str, str]) -> str:
        try:
            resolved, secrets = resolve_env(value, env)
        except ValueError as exc:
            raise _FieldError(f"routes.{self.name}.{where}", str(exc)) from None
        self.secrets += [s for s in secrets if s]
        return resolved

    def accepts(self, topic: str, event_type: str) -> bool:
        """Whether this route delivers ``event_type`` events of ``topic``."""
        return topic in self.topics and (self.event_types is None
                                         or event_type in self.event_types)

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this route masked (for logs and dead letters)."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def describe(self) -> dict[str, Any]:
        """The route as configured, with ``${env:...}`` references instead of secrets."""
        return {"name": self.name, "method": self.method, "url": self.model.url,
                "topics": self.topics,
                "event_types": sorted(self.event_types) if self.event_types else "all",
                "timeout": self.timeout, "max_attempts": self.max_attempts,
                "headers": {k: v if ENV_REF.search(v) else _mask(k, v)
                            for k, v in self.model.headers.items()},
                "body": "the event payload" if self.body is None else self.body}


def _mask(name: str, value: str) -> str:
    # A literal value in the file may still be a credential; show only harmless names.
    return value if name.lower() in ("content-type", "accept", "user-agent") else "***"


class ForwardConfig:
    """The forwarder's configuration: consumer group, parallelism and routes."""

    def __init__(self, model: ForwardModel, routes: list[Route], source: str) -> None:
        self.group = model.group
        self.workers = model.workers
        self.concurrency = model.concurrency
        self.park_table = model.park_table
        self.routes = routes
        self.source = source

    @property
    def topics(self) -> list[str]:
        """Every topic some route reads."""
        return sorted({t for route in self.routes for t in route.topics})


class _FieldError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "file"
    message = str(error["msg"]).removeprefix("Value error, ")
    secret_bearing = "headers" in where or where.endswith("url") or error["type"] == "missing"
    if error["type"].startswith(("greater", "less", "int_", "float_", "string_pattern",
                                 "literal", "bool")) and not secret_bearing:
        message += f" (got {error['input']!r})"
    return f"{where}: {message}"


def build_config(data: dict[str, Any], source: str, env: dict[str, str]) -> ForwardConfig:
    """Validate parsed configuration ``data``; ``source`` names it in errors."""
    try:
        model = ForwardModel.model_validate(data)
        if not model.routes:
            raise _FieldError("routes", "no route configured: add a [routes.NAME] table "
                                        "or pass --url and --topic")
        routes = []
        for name, route in model.routes.items():
            if not ROUTE_NAME.match(name):
                raise _FieldError(f"routes.{name}", "a route name is letters, digits, - and _ "
                                                    "(at most 64)")
            routes.append(Route(name, route, env))
    except ValidationError as exc:
        raise ConfigurationError(f"{source}: {_first_error(exc)}") from None
    except _FieldError as exc:
        raise ConfigurationError(f"{source}: {exc}") from None
    return ForwardConfig(model, routes, source)


def read_file(path: Path) -> dict[str, Any]:
    """The parsed TOML of ``path``, or a one-line error."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None


__all__ = ["ForwardConfig", "Route", "build_config", "read_file", "resolve_env"]
