"""Fault injection for tests and bench/migration.py: a process that ``kill -9``-s itself
right after the commit of its Nth step, before it tells the next step.

``OUTBOX_FAULT_KILL_AFTER=N`` in a process's environment arms it. The legacy services
call :func:`step_committed` after each step's commit, before their call; the outbox saga's
services (run through ``python -m services.legacy.cli saga SERVICE``) count the events
their handler applied and die right after the commit that made them durable — the same
moment: the step's rows are committed, the next step is not yet told (for the saga: the
event sits in the outbox, the relay has not published it, the offset is not committed).

Never set it in production.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from consumers.handlers import Registration

KILL_AFTER_ENV = "OUTBOX_FAULT_KILL_AFTER"
_PENDING = "fault_steps"


class _Counter:
    def __init__(self) -> None:
        value = os.environ.get(KILL_AFTER_ENV, "").strip()
        self.kill_after = int(value) if value else None
        self.count = 0
        self.lock = threading.Lock()

    def committed(self, steps: int = 1) -> None:
        if self.kill_after is None or steps <= 0:
            return
        with self.lock:
            self.count += steps
            if self.count >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)


@functools.cache
def _counter() -> _Counter:
    return _Counter()


def step_committed() -> None:
    """A legacy step committed (and may owe a call): die now if this is the armed one."""
    _counter().committed()


def armed() -> bool:
    """Whether this process is set to kill itself (``OUTBOX_FAULT_KILL_AFTER``)."""
    return _counter().kill_after is not None


def counting(registration: Registration) -> Registration:
    """``registration`` whose handler also counts the events it applied; the count is
    settled when their transaction commits (and forgotten when it rolls back).

    The call plan is kept as resolved from the service's own handler (payload model,
    ``Session``, ``Publisher``, partials), so the handler is called exactly as before; it
    must ask for the ``Session``, which carries the count to the commit.
    """
    handler = registration.handler

    def counted(*args: Any, **kwargs: Any) -> None:
        handler(*args, **kwargs)
        session = next((a for a in (*args, *kwargs.values()) if isinstance(a, Session)), None)
        if session is None:
            raise TypeError(f"{registration.name} takes no Session: its steps cannot be "
                            "counted")
        session.info[_PENDING] = session.info.get(_PENDING, 0) + 1

    return dataclasses.replace(registration, handler=counted)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    _counter().committed(session.info.pop(_PENDING, 0))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
