"""One typed settings object for the library, the daemons and the CLI.

Values come from environment variables prefixed ``OUTBOX_`` (``OUTBOX_DATABASE_URL``,
``OUTBOX_KAFKA_BOOTSTRAP_SERVERS``, ``OUTBOX_CONNECT_URL`` ...); CLI flags override them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbox.errors import ConfigurationError, InvalidIdentifierError
from outbox.rules import DEFAULT_MAX_RECORD_BYTES

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise naming ``what``.

    Names from configuration end up in SQL; only ``[A-Za-z_][A-Za-z0-9_]*`` (at most 63
    characters, PostgreSQL's limit) is accepted, so nothing needs quoting or escaping.
    """
    if not IDENTIFIER.match(value):
        raise InvalidIdentifierError(
            f"{what} {value!r} is not a plain SQL identifier: use letters, digits and "
            "underscores, starting with a letter or underscore, at most 63 characters")
    return value


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``Billing`` -> ``"Billing"``, ``user`` ->
    ``"user"``): the one way the toolkit writes a configured name into SQL, so mixed-case
    and reserved-word names mean the same object in every statement."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``, both parts quoted with :func:`quote_ident`."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


class Settings(BaseSettings):
    """Configuration shared by the library, the relay, the consumers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="OUTBOX_", extra="ignore",
                                      populate_by_name=True)

    database_url: str = Field(
        default="", description="PostgreSQL URL, libpq (postgresql://) or SQLAlchemy form")
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="extra librdkafka properties (JSON object in OUTBOX_KAFKA_CONFIG), "
                    "e.g. security.protocol, sasl.*; secrets are never logged")
    connect_url: str = "http://localhost:8083"
    db_schema: str = "public"
    outbox_table: str = "outbox"
    inbox_table: str = "inbox"
    topic_template: str = "{aggregatetype}-events"
    max_payload_bytes: int = 1024 * 1024
    # Key, value and headers of one Kafka record; the default fits librdkafka's and the
    # broker's default message.max.bytes (outbox.rules).
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    @field_validator("db_schema", "outbox_table", "inbox_table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return check_identifier(value, "name")

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _kafka_config(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"OUTBOX_KAFKA_CONFIG is not a JSON object: {exc}") from exc
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    def require_database_url(self) -> str:
        """The database URL, or a one-line error saying how to set it."""
        url = self.database_url.strip()
        if not url:
            raise ConfigurationError(
                "no database URL: set OUTBOX_DATABASE_URL (or --database-url), e.g. "
                "postgresql://user:password@localhost:5432/app")
        if not url.startswith(URL_SCHEMES):
            raise ConfigurationError(
                f"database URL {redact_url(url)!r} is not a PostgreSQL URL: it must start "
                f"with one of {', '.join(URL_SCHEMES)}")
        return url

    def libpq_url(self) -> str:
        """The database URL in libpq form, for psycopg."""
        url = self.require_database_url()
        for prefix in ("postgresql+psycopg://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql://" + url[len(prefix):]
        return url

    def sqlalchemy_url(self) -> str:
        """The database URL in SQLAlchemy form, with the psycopg 3 driver."""
        return "postgresql+psycopg://" + self.libpq_url()[len("postgresql://"):]

    def producer_config(self) -> dict[str, str]:
        """librdkafka producer properties: bootstrap servers plus the pass-through ones."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_config}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and ``overrides`` (CLI flags), with clear errors."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigurationError(f"invalid setting {where}: {first['msg']}") from None


SECRET_KEYS = re.compile(r"(password|secret|token|sasl\.jaas|key\.password)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings carry: database and Connect passwords (URL, query
    string or keyword form) and secret-looking Kafka properties."""
    found: list[str] = []
    for url in (settings.database_url, settings.connect_url):
        found += re.findall(r"://[^:/@?#]+:([^@/?#]+)@", url)
        found += re.findall(r"[?&]password=([^&#\s]+)", url)
        found += re.findall(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
    found += [v for k, v in settings.kafka_config.items() if SECRET_KEYS.search(k)]
    cleaned = {s.strip("'") for s in found}
    return sorted((s for s in cleaned if len(s) >= 3), key=len, reverse=True)


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every secret of ``settings`` replaced by ``***`` (for errors and logs)."""
    for secret in secrets_of(settings):
        text = text.replace(secret, "***")
    return text


def redact_config(config: dict[str, str]) -> dict[str, str]:
    """A copy of a client configuration with secret values masked, safe to log or print."""
    return {k: ("***" if SECRET_KEYS.search(k) else v) for k, v in config.items()}
