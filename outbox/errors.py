"""The toolkit's exceptions. Each class's docstring is its default message."""

from __future__ import annotations


class OutboxError(Exception):
    """An outbox toolkit error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(OutboxError):
    """The toolkit's configuration is missing or malformed."""


class InvalidIdentifierError(ConfigurationError):
    """A schema or table name from configuration is not a plain SQL identifier."""


class EventValidationError(OutboxError):
    """An event cannot be written to the outbox: a field is empty, too long or malformed."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"outbox event field {field!r}: {problem}")


class PayloadTooLargeError(EventValidationError):
    """An event's payload is larger than the configured limit."""


class ServiceUnavailableError(OutboxError):
    """The database or the Kafka broker did not answer in time."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver errors span several), or its type's
    name when the message is empty: what one-line errors and log lines show."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
