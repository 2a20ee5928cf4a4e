"""Which shards this relay instance owns: session-level advisory locks, fairly divided.

Each shard (``outbox.shard``, 0..255) is owned by at most one relay: the one whose
database session holds ``pg_try_advisory_lock(RELAY_SHARD_LOCK_NAMESPACE, shard)``. A relay
that dies loses its session and with it its locks, so the others take its shards over at
their next rebalance (every couple of seconds). Each relay aims at ``ceil(256 / live
relays)`` shards, counting live relays by their sessions' ``application_name``, and at
least the processes started together with it (``siblings``: ``--processes``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

import psycopg

from outbox.names import SHARD_COUNT
from relay.queries import Queries

log = logging.getLogger("outbox.relay")


class ShardOwnership:
    """The shards held by one relay session, and the rules for taking and giving them."""

    def __init__(self, queries: Queries, shard_count: int = SHARD_COUNT,
                 siblings: int = 1, groups: int = 1) -> None:
        self.queries = queries
        self.shard_count = shard_count
        # relays started together with this one (this one included): counted as live
        # before their sessions are up
        self.siblings = siblings
        self.owned: set[int] = set()
        # Kept with ``owned`` (read on every claim, and by the stats thread, which only
        # ever sees a replaced tuple): the owned shards ascending, and those of each of
        # ``groups`` shard groups (``shard % groups``).
        self.groups = groups
        self.sorted: tuple[int, ...] = ()
        self.by_group: list[list[int]] = [[] for _ in range(groups)]

    def _changed(self) -> None:
        self.sorted = tuple(sorted(self.owned))
        self.by_group = [[s for s in self.sorted if s % self.groups == group]
                         for group in range(self.groups)]

    def target(self, live_relays: int) -> int:
        """How many shards one of ``live_relays`` relays should own."""
        return math.ceil(self.shard_count / max(1, live_relays))

    def rebalance(self, conn: psycopg.Connection[tuple[object, ...]],
                  can_release: Callable[[int], bool]) -> tuple[list[int], list[int]]:
        """Take free shards up to the fair share, give back the excess; (acquired, released).

        ``can_release`` says whether a shard has nothing in flight: a shard is only handed
        over between batches, so the next owner never races this one on the same rows.
        """
        pattern = self.queries.application_name + ":%"
        row = conn.execute(self.queries.live_relays, {"pattern": pattern}).fetchone()
        live = int(row[0]) if row else 1  # type: ignore[call-overload]
        target = self.target(max(live, self.siblings))
        acquired: list[int] = []
        released: list[int] = []
        if len(self.owned) > target:
            # Give back the highest shards first: deterministic, easy to read in status.
            excess = len(self.owned) - target
            released = [s for s in sorted(self.owned, reverse=True) if can_release(s)][:excess]
            self._unlock(conn, released)
        elif len(self.owned) < target:
            taken = {int(r[0]) for r in  # type: ignore[call-overload]
                     conn.execute(self.queries.shard_owners).fetchall()}
            free = [s for s in range(self.shard_count) if s not in taken]
            # Random order: relays starting together do not fight over the same shards.
            random.shuffle(free)
            # As many tries as shards wanted, in one statement; those another relay took
            # meanwhile are made up from the next free ones: a round trip per attempt, not
            # per shard (a second `--processes` child took 0.34 s for its 128 that way).
            while free and len(self.owned) < target:
                wanted = target - len(self.owned)
                tries, free = free[:wanted], free[wanted:]
                got = [int(r[0]) for r in  # type: ignore[call-overload]
                       conn.execute(self.queries.shard_locks, {"shards": tries}).fetchall()]
                self.owned.update(got)
                acquired.extend(got)
        if acquired or released:
            self._changed()
        return acquired, released

    def release_all(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Unlock every owned shard (graceful shutdown)."""
        self._unlock(conn, sorted(self.owned))
        self._changed()

    def _unlock(self, conn: psycopg.Connection[tuple[object, ...]], shards: list[int]) -> None:
        """Give up ``shards`` (owned ones), in one statement."""
        if shards:
            conn.execute(self.queries.shard_unlocks, {"shards": shards})
            self.owned.difference_update(shards)

    def forget(self) -> None:
        """The session is gone, and its locks with it."""
        self.owned.clear()
        self._changed()
