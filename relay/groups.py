"""Shard groups and their windows: what the loop reads next, and the progress it records.

The owned shards are split into ``pipeline_depth`` groups (``shard % depth``). At most one
batch per group is in flight, so while Kafka acknowledges group 0's batch the loop reads
and produces group 1's; a shard is never in two batches at once. Each group reads its
shards' window (relay.window): a few rows in one statement while the relay keeps up, a
server-side cursor fetched one batch ahead (relay.reader) under a backlog.

:class:`Progress` holds every owned shard's relay cursor: what the reads go by, and what
is written (at most every ``progress_interval``) for a crash to fall back to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from outbox.settings import Settings
from relay.delivery import Batch
from relay.queries import Queries
from relay.reader import WindowReader
from relay.rows import POSITION, SHARD, WINDOW_SNAPSHOT, Row
from relay.window import ShardCursor, Window, in_stream_order, open_window, read_params

Connection = psycopg.Connection[tuple[Any, ...]]


class Progress:
    """The relay cursors of the owned shards (only this session writes them while it
    holds the shards' locks), and those not written yet."""

    def __init__(self, queries: Queries, interval: float) -> None:
        self.queries = queries
        self.interval = interval
        self.cursors: dict[int, ShardCursor] = {}
        self.unsaved: dict[int, ShardCursor] = {}
        self.next_save = 0.0

    def clear(self) -> None:
        """Forget everything: lost with the session (those rows are sent again)."""
        self.cursors.clear()
        self.unsaved.clear()

    def load(self, conn: Connection, shards: list[int]) -> None:
        """The cursor of owned shards not known yet."""
        missing = [s for s in shards if s not in self.cursors]
        if not missing:
            return
        for shard, done, win, upto in conn.execute(
                self.queries.load_cursors, {"shards": missing}).fetchall():
            self.cursors[int(shard)] = ShardCursor(str(done), win, int(upto))
        for shard in missing:
            self.cursors.setdefault(shard, ShardCursor())

    def moved(self, changed: dict[int, ShardCursor]) -> None:
        self.cursors.update(changed)
        self.unsaved.update(changed)

    def save(self, conn: Connection, force: bool = False) -> None:
        """Write the cursors that moved, at most every ``interval`` unless forced.

        Reads go by the cursors in memory; the written ones are what a crash falls back to
        (the rows after them are sent again) and what ``outbox status`` and retention see.
        Forced before shards are released and at shutdown.
        """
        now = time.monotonic()
        if not self.unsaved or not (force or now >= self.next_save):
            return
        changed, self.unsaved = self.unsaved, {}
        shards = sorted(changed)
        conn.execute(self.queries.save_cursors, {
            "shards": shards, "done": [changed[s].done for s in shards],
            "win": [changed[s].win for s in shards], "upto": [changed[s].upto for s in shards]})
        self.next_save = now + self.interval


@dataclass
class ShardGroup:
    """One shard group: its batch in flight, its window, and whether it has work."""

    index: int
    in_flight: Batch | None = None
    # there may be rows to read in any of its shards (a poll, a settled batch ...)
    dirty: bool = True
    # shards NOTIFY named since its last read (relay.hints)
    hinted: set[int] = field(default_factory=set)
    # the retry claim may find rows
    retry_due: bool = True
    # its last window was larger than a batch (read it by cursor)
    backlogged: bool = True
    # the window being read, and the connection holding its server cursor
    window: Window | None = None
    reader: WindowReader | None = field(default=None, repr=False)

    @property
    def has_work(self) -> bool:
        """It may have rows to read."""
        return self.dirty or bool(self.hinted)

    def reset(self) -> None:
        """After the session was lost: nothing in flight, everything to be read again."""
        self.in_flight = None
        self.dirty = self.retry_due = True

    def open_reader(self, settings: Settings, queries: Queries, application_name: str,
                    batch_size: int) -> WindowReader:
        if self.reader is None:
            self.reader = WindowReader(settings, queries, application_name, batch_size)
        return self.reader

    def close_window(self) -> None:
        """Forget the window; the next claim opens one from the shards' cursors."""
        self.window = None
        if self.reader is not None:
            self.reader.close()

    def shutdown_reader(self) -> None:
        self.window = None
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.shutdown()


def mark_all(groups: list[ShardGroup], retry: bool) -> None:
    """Every group may have rows to read (and, with ``retry``, to retry)."""
    for group in groups:
        group.dirty = True
        group.retry_due = group.retry_due or retry


def mark_hinted(groups: list[ShardGroup], owned: set[int],
                shards: frozenset[int] | None) -> None:
    """NOTIFY named these shards (None: any shard, relay.hints): the groups of those owned
    read them next."""
    if shards is None:
        mark_all(groups, retry=False)
        return
    for shard in shards:
        if shard in owned:
            groups[shard % len(groups)].hinted.add(shard)


def read_window(group: ShardGroup, reader: WindowReader, conn: Connection, queries: Queries,
                progress: Progress, shards: list[int], limit: int) -> list[Row]:
    """The next rows of the group's window, opening a window if none is open.

    While the relay keeps up, a window holds a few rows and is read whole by one
    statement on the main connection. Under a backlog it is read through the group's
    WindowReader (a server-side cursor, fetched one batch ahead); a group switches to
    that after a window did not fit one batch, and back after one that did.
    """
    window = group.window
    if window is not None and set(window.wins) != set(shards):
        group.close_window()  # shards came or went since it was opened
        window = None
    if reader.open and window is None and reader.shards != shards:
        reader.close()  # started for other shards (prefetch)
    cursors = progress.cursors
    if window is None:
        progress.load(conn, shards)
        if not group.backlogged:
            params: dict[str, Any] = read_params(shards, cursors, None)
            params["limit"] = limit + 1
            first = conn.execute(queries.first_window_batch, params).fetchall()
            if not first:
                return []
            window = group.window = open_window(shards, cursors, first[0][WINDOW_SNAPSHOT])
            window.exhausted = len(first) <= limit
            group.backlogged = not window.exhausted
            return advance(window, [cast(Row, r[:WINDOW_SNAPSHOT]) for r in first[:limit]])
        if not reader.open:
            reader.start(shards, read_params(shards, cursors, None))
        rows = cast(list[Row], reader.fetch())
        assert reader.snapshot is not None
        window = group.window = open_window(shards, cursors, reader.snapshot)
    elif window.exhausted:
        return []
    else:
        if not reader.open:
            reader.resume(shards, read_params(shards, cursors, window.wins,
                                              after=window.read_upto))
        rows = cast(list[Row], reader.fetch())
    if not reader.open:
        window.exhausted = True
        if window.read_upto is None:  # the whole window fitted one batch
            group.backlogged = False
    if not rows and not window.touched:
        group.window = None  # an empty window: nothing to record
        return []
    return advance(window, rows)


def prefetch(group: ShardGroup, reader: WindowReader, conn: Connection, progress: Progress,
             shards: list[int]) -> None:
    """Under a backlog, start reading the group's next window before it is claimed, so
    PostgreSQL sorts it while the loop works on the other groups."""
    if shards and not reader.open:
        progress.load(conn, shards)
        reader.start(shards, read_params(shards, progress.cursors, None))


def advance(window: Window, rows: list[Row]) -> list[Row]:
    """Note rows handed out of the window (after checking their order)."""
    if rows:
        if not in_stream_order(rows, window.read_upto):
            raise WindowOrderError("a window read returned rows out of (shard, seq) order; "
                                   "the relay stops rather than reorder an aggregate")
        window.read_upto = POSITION(rows[-1])
        window.touched |= {row[SHARD] for row in rows}
    return rows


class WindowOrderError(RuntimeError):
    """A window statement's plan returned rows out of stream order (relay.window)."""
