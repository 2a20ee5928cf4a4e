"""Which failures are worth retrying, and which mean the database is gone."""

from __future__ import annotations

import psycopg
import psycopg.errors
import sqlalchemy.exc

# Retrying the same transaction may well succeed: another transaction was in the way.
_TRANSIENT = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected,
              psycopg.errors.LockNotAvailable)


def _driver_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def is_transient(exc: BaseException) -> bool:
    """A conflict with another transaction (serialization failure, deadlock, lock timeout)."""
    return isinstance(_driver_error(exc), _TRANSIENT)


def is_connection_lost(exc: BaseException) -> bool:
    """The database could not be reached or the connection broke: not the message's fault."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    driver = _driver_error(exc)
    return isinstance(driver, psycopg.OperationalError) and not isinstance(driver, _TRANSIENT)


class Rewind(Exception):  # noqa: N818 - control flow inside the consumer runtime
    """Stop this batch: nothing of what is left of it was settled; consume it again (seek
    back) after ``delay`` seconds. Raised for an outage, never for one message's fault."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"rewind, retry in {delay:.1f}s")
        self.delay = delay
