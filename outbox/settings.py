"""One typed settings object for the library, the daemons and the CLI.

Values come from environment variables prefixed ``OUTBOX_`` (``OUTBOX_DATABASE_URL``,
``OUTBOX_KAFKA_BOOTSTRAP_SERVERS``, ``OUTBOX_CONNECT_URL`` ...); CLI flags override them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from outbox.errors import ConfigurationError, InvalidIdentifierError
from outbox.rules import DEFAULT_MAX_RECORD_BYTES

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
CONNECT_TIMEOUT = 10  # seconds, unless the database URL says otherwise


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
    # NoDecode: the validator below parses the JSON, so a malformed value is one clear
    # line instead of pydantic-settings' own traceback.
    kafka_config: Annotated[dict[str, str], NoDecode] = Field(
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
    # CloudEvents' Kafka binary mode (outbox.cloudevents): ``binary`` adds the ce_*
    # headers to every record, from the relay and from the rendered Debezium config.
    cloudevents: Literal["off", "binary"] = "off"
    cloudevents_source: str = "/outbox"

    @field_validator("cloudevents_source")
    @classmethod
    def _ce_source(cls, value: str) -> str:
        from outbox.cloudevents import source_problem

        problem = source_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("topic_template")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        # A typo here would route every event to a topic Kafka refuses (the relay would
        # park every row): refused at start instead. Not a secret: it is shown.
        sample = value.replace("{aggregatetype}", "order")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", sample) or sample in (".", ".."):
            raise ValueError(
                f"{value!r} makes topic names Kafka refuses ({sample!r} for the aggregate "
                "type 'order'): a topic name is 1 to 249 characters of [A-Za-z0-9._-]; "
                "write the placeholder as {aggregatetype}, e.g. {aggregatetype}-events")
        return value

    @field_validator("db_schema", "outbox_table", "inbox_table")
    @classmethod
    def _identifier(cls, value: str, info: ValidationInfo) -> str:
        return check_identifier(value, _SOURCES.get(str(info.field_name), "name"))

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _kafka_config(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                # The message names the position, never the text (it may hold a password).
                raise ValueError(f"not JSON ({exc.msg} at character {exc.pos})") from None
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        raise ValueError(f"a JSON {type(value).__name__} where an object is expected")

    def require_database_url(self) -> str:
        """The database URL, or a one-line error saying how to set it."""
        url = self.database_url.strip()
        if not url:
            raise ConfigurationError(
                "no database URL: set OUTBOX_DATABASE_URL (or --database-url), e.g. "
                "postgresql://user:password@localhost:5432/app")
        if not url.startswith(URL_SCHEMES):
            raise ConfigurationError(
                f"database URL {redact_url(url)!r} is not a PostgreSQL URL: write it as "
                "postgresql://user@host:5432/database, with the password after the user "
                f"name (it must start with one of {', '.join(URL_SCHEMES)})")
        for port in _url_ports(url):
            if not port.isdigit():
                raise ConfigurationError(
                    f"database URL {redact_url(url)!r}: port {port!r} is not a number; "
                    "fix OUTBOX_DATABASE_URL / --database-url")
        return url

    def libpq_url(self) -> str:
        """The database URL in libpq form, for psycopg; with ``connect_timeout=10`` unless
        it names one, so no command waits minutes for a host that does not answer."""
        url = self.require_database_url()
        for prefix in ("postgresql+psycopg://", "postgres://"):
            if url.startswith(prefix):
                url = "postgresql://" + url[len(prefix):]
        if "connect_timeout=" not in url:
            url += ("&" if "?" in url else "?") + f"connect_timeout={CONNECT_TIMEOUT}"
        return url

    def sqlalchemy_url(self) -> str:
        """The database URL in SQLAlchemy form, with the psycopg 3 driver."""
        return "postgresql+psycopg://" + self.libpq_url()[len("postgresql://"):]

    def producer_config(self) -> dict[str, str]:
        """librdkafka producer properties: bootstrap servers plus the pass-through ones."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_config}


def _url_ports(url: str) -> list[str]:
    """The ports a libpq URL names: ``host:port`` of each host (``h1:5432,h2:5433``) and a
    ``port=`` query parameter. User info ends at the first ``@`` before any ``/``, as
    libpq reads it."""
    rest = url.split("://", 1)[1]
    userinfo = re.match(r"[^@/]*@", rest)
    if userinfo:
        rest = rest[userinfo.end():]
    hosts = re.split(r"[/?#]", rest, maxsplit=1)[0]
    ports = [h.rpartition("]")[2].partition(":")[2] for h in hosts.split(",")]
    ports += re.findall(r"[?&]port=([^&#]*)", url)
    return [p for p in ports if p]


# Settings fields -> how a user sets them, for one-line errors.
_SOURCES = {"database_url": "OUTBOX_DATABASE_URL / --database-url",
            "kafka_bootstrap_servers": "OUTBOX_KAFKA_BOOTSTRAP_SERVERS / "
                                       "--kafka-bootstrap-servers",
            "kafka_config": "OUTBOX_KAFKA_CONFIG",
            "connect_url": "OUTBOX_CONNECT_URL / --connect-url",
            "db_schema": "OUTBOX_DB_SCHEMA / --schema",
            "outbox_table": "OUTBOX_OUTBOX_TABLE / --outbox-table",
            "inbox_table": "OUTBOX_INBOX_TABLE / --inbox-table",
            "topic_template": "OUTBOX_TOPIC_TEMPLATE / --topic-template",
            "max_payload_bytes": "OUTBOX_MAX_PAYLOAD_BYTES",
            "max_record_bytes": "OUTBOX_MAX_RECORD_BYTES",
            "cloudevents": "OUTBOX_CLOUDEVENTS",
            "cloudevents_source": "OUTBOX_CLOUDEVENTS_SOURCE"}
_HINTS = {"kafka_config": "; write a JSON object such as "
                          '{"security.protocol": "SASL_SSL"}, or pass --kafka-config KEY=VALUE'}


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and ``overrides`` (CLI flags), with clear errors.

    A rejected value is named by where it comes from (variable and flag), never echoed:
    it may be a password.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigurationError(
            f"invalid {_SOURCES.get(field, field)}: {message}{_HINTS.get(field, '')}") from None
    except SettingsError as exc:  # a value pydantic-settings could not even decode
        raise ConfigurationError(f"invalid OUTBOX_* environment variable: {exc}") from None


# Kafka (librdkafka) properties whose values are secrets.
SECRET_KEYS = re.compile(r"(password|secret|token|sasl\.jaas|key\.pem|private)",
                         re.IGNORECASE)
MASK = "***"

# Where a password can sit in a database or Connect URL (group 2 is the secret):
# - user:PASSWORD@host (a URL's user info)
# - ?password=PASSWORD&... (libpq URL query parameters, also sslpassword)
# - password=PASSWORD or password='PASS WORD' (libpq's keyword form)
_SECRET_FORMS = (
    re.compile(r"(://[^:/?#@\s]*:)([^@?#\s]*)(?=@)"),
    # (lazy, so a message's "...?password=x: error" keeps its colon)
    re.compile(r"([?&](?:ssl)?password=)([^&#\s]*?)(?=$|[&#\s'\"]|:\s)", re.IGNORECASE),
    re.compile(r"((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)",
               re.IGNORECASE),
)


def redact_url(url: str) -> str:
    """A database or Connect URL (or libpq keyword string) with every password replaced by
    ``***``: ``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``,
    also ``?password=secret`` and ``host=h password=secret``."""
    for form in _SECRET_FORMS:
        url = form.sub(_mask, url)
    return url


def _mask(match: re.Match[str]) -> str:
    # Masked already (a message built from a redacted URL): keep what followed the mask.
    secret = match.group(2)
    return match.group(1) + MASK + (secret[len(MASK):] if secret.startswith(MASK) else "")


def _names_in(url: str) -> set[str]:
    """The user and database names a URL or keyword string shows anyway."""
    names = set(re.findall(r"(?:^|\s)(?:user|dbname)\s*=\s*(\S+)", url))
    try:
        parts = urlsplit(url)
        names |= {parts.username or "", parts.path.strip("/")}
    except ValueError:  # not a URL libpq could use either; its passwords stay masked
        pass
    return {unquote(n) for n in names if n}


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings carry: database and Connect passwords (URL user
    info, query string or keyword form, as written and percent-decoded) and the values of
    secret-looking Kafka properties; longest first.

    A password that is also the URL's user or database name (the local stack's
    ``outbox:outbox@.../outbox``) is masked in URLs but not as a word elsewhere: those
    names are printed anyway, and masking them would garble every table name.
    """
    found = url_secrets(settings.database_url) + url_secrets(settings.connect_url)
    found += [v for k, v in settings.kafka_config.items() if SECRET_KEYS.search(k)]
    return _longest_first(found)


def url_secrets(url: str) -> list[str]:
    """The passwords written in one database or Connect URL (or keyword string), as
    written and percent-decoded; not those that are also its user or database name."""
    found = [m.group(2) for form in _SECRET_FORMS for m in form.finditer(url)]
    shown = _names_in(url)
    return [s for s in _longest_first(found) if s not in shown]


def _longest_first(found: list[str]) -> list[str]:
    cleaned = {s.strip("'") for s in found}
    cleaned |= {unquote(s) for s in cleaned}
    return sorted((s for s in cleaned if len(s) >= 3 and s != MASK), key=len, reverse=True)


def scrub_secrets(text: str, secrets: list[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every secret of ``settings`` replaced by ``***`` (for errors and logs)."""
    return scrub_secrets(redact_url(text), secrets_of(settings))


def redact_config(config: dict[str, str]) -> dict[str, str]:
    """A copy of a client configuration with secret values masked, safe to log or print."""
    return {k: (MASK if SECRET_KEYS.search(k) else v) for k, v in config.items()}
