"""UUIDv7 (RFC 9562): time-ordered event ids.

48 bits of Unix milliseconds, then a 12-bit counter that keeps ids from one process
strictly increasing within the same millisecond, then 62 random bits.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> uuid.UUID:
    """A new UUIDv7; later calls in this process return larger ids."""
    global _last_ms, _counter  # noqa: PLW0603 - process-wide monotonic state, guarded by _lock
    # One read of the system's random source per id: 62 random bits, and 10 more to seed
    # the counter when the millisecond changes.
    random = int.from_bytes(os.urandom(9), "big")
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms, _counter = now_ms, random >> 62 & 0x3FF
        else:
            # Same millisecond (or the clock stepped back): count up; on overflow borrow
            # the next millisecond rather than go backwards.
            _counter += 1
            if _counter > 0xFFF:
                _last_ms, _counter = _last_ms + 1, 0
        ms, counter = _last_ms, _counter
    rand = random & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)
