"""How the toolkit's daemons answer SIGTERM and SIGINT: drain once, exit at once twice."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

from outbox.exit_codes import EXIT_INTERRUPTED


def drain_on_signals(request_stop: Callable[[], None], log: logging.Logger,
                     component: str) -> None:
    """Install SIGTERM/SIGINT handlers: the first logs ``<component>_signal`` and calls
    ``request_stop`` (the daemon finishes what is in flight); a second one logs
    ``<component>_abort`` and exits with EXIT_INTERRUPTED without draining (the operator
    asked twice)."""
    count = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        if count > 1:
            log.warning("second signal: exiting now", extra={"action": f"{component}_abort"})
            os._exit(EXIT_INTERRUPTED)
        log.info("signal %s: draining", signal.Signals(signum).name,
                 extra={"action": f"{component}_signal"})
        request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
