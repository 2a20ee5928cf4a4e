"""How the toolkit's daemons answer SIGTERM and SIGINT: drain once, exit at once twice."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from types import FrameType

from outbox.exit_codes import EXIT_INTERRUPTED


def drain_on_signals(request_stop: Callable[[], None], log: logging.Logger,
                     component: str, *, signal_action: str | None = None,
                     abort_action: str | None = None) -> None:
    """Install SIGTERM/SIGINT handlers: the first logs ``signal_action`` (default
    ``<component>_signal``) and calls ``request_stop`` (the daemon finishes what is in
    flight); a second one logs ``abort_action`` (default ``<component>_abort``) and exits
    with EXIT_INTERRUPTED without draining (the operator asked twice)."""
    count = 0
    signal_action = signal_action or f"{component}_signal"
    abort_action = abort_action or f"{component}_abort"

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        if count > 1:
            log.warning("second signal: exiting now", extra={"action": abort_action})
            os._exit(EXIT_INTERRUPTED)
        log.info("signal %s: draining", signal.Signals(signum).name,
                 extra={"action": signal_action})
        request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
