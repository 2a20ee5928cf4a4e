"""Which shards have new rows, as NOTIFY tells: the loop reads those, not all it owns.

The NOTIFY trigger (``outbox relay install-notify``, relay.sql ``notify_trigger``) sends
each inserted row's shard as the payload; PostgreSQL folds identical notifications of one
transaction, so a transaction sends each of its shards once. The LISTEN thread
(relay.background) adds every payload here and wakes the loop, which takes what has
accumulated since it last looked.

A hint is only about cost: reading a few shards' windows instead of every owned shard's
on each wake (128 shards per group: about 1 ms a read, most of a relay's time at 1,000
events/s). Polling every ``--poll-interval`` still reads every shard, so a lost
notification (the LISTEN connection reconnecting) delays rows, never loses them. A
payload that names no shard (a trigger installed by an earlier version, which sends
``''``, or anything else sent on the channel) means "maybe any shard".
"""

from __future__ import annotations

import logging
import threading

from outbox.names import SHARD_COUNT

log = logging.getLogger("outbox.relay")


def parse(payload: str) -> frozenset[int] | None:
    """The shards a notification names; None: it does not say (read every shard)."""
    shards: set[int] = set()
    for part in payload.split(","):
        text = part.strip()
        if not (text.isascii() and text.isdigit()):
            return None
        shard = int(text)
        if shard >= SHARD_COUNT:
            return None
        shards.add(shard)
    return frozenset(shards)


class Hints:
    """Shards named since the loop last took them; shared by the LISTEN thread and the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: set[int] = set()
        self._any = False

    def add(self, payload: str) -> None:
        """One notification's payload (see :func:`parse`)."""
        shards = parse(payload)
        with self._lock:
            if shards is None:
                self._any = True
            else:
                self._shards |= shards

    def take(self) -> frozenset[int] | None:
        """The shards named since the last call and forget them; None: any shard may have
        rows (a notification said so)."""
        with self._lock:
            shards, self._shards = self._shards, set()
            any_shard, self._any = self._any, False
        return None if any_shard else frozenset(shards)


def note_outdated_trigger(table: str) -> None:
    """Say (once per relay, the caller's part) that ``table``'s trigger names no shards."""
    log.info("the NOTIFY trigger of %s names no shards (installed by an earlier version): "
             "every notification reads every shard; run `outbox relay install-notify` again "
             "for cheaper wake-ups", table, extra={"action": "notify_trigger_outdated"})
