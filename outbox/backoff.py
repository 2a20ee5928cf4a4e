"""Backoff with jitter: how long to wait before retry number ``attempt``. Pure, tested alone."""

from __future__ import annotations

import random
from collections.abc import Callable


def compute_backoff(attempt: int, *, base: float = 0.2, cap: float = 15.0,
                    rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    "Equal jitter": half of the exponential step is fixed, half is random, so processes
    that lost the same broker or database do not retry in lock step, yet each waits at
    least ``base / 2`` once something failed. ``attempt < 1`` means nothing failed: no wait.
    """
    if attempt < 1:
        return 0.0
    # min() before the power would not be enough: 2 ** 2000 overflows float conversion.
    step = cap if attempt > 60 else min(cap, base * 2 ** (attempt - 1))
    return step / 2 + rand() * step / 2
