"""Snapshot windows: how the relay knows what it delivered without updating each row.

Marking every delivered row (an ``UPDATE`` per row: a new row version and new index
entries) capped the relay at about a fifth of what Kafka takes (docs/benchmarks.md).
Instead the relay keeps, per shard, one small cursor row (``<outbox>_relay_cursor``):

- ``done``: a PostgreSQL snapshot (``pg_snapshot``). Every fast-path row of the shard whose
  writing transaction (``txid``) is visible in it has been delivered.
- ``win`` and ``upto``: the window being delivered, a later snapshot, and the last seq
  of the shard delivered in it. The shard's rows visible in ``win`` with ``seq <= upto``
  have been delivered too.

A window is read shard after shard (ascending), each shard's rows in ``seq`` order: rows
visible in ``win`` and not in ``done``. That is the window's *stream order*, a row's
position in it ``(shard, seq)`` (:data:`Position`); nothing sorts the whole window. When
it has been read to the end and every row of it acknowledged, ``done`` becomes ``win``.

Why nothing is skipped: a row becomes visible in a snapshot exactly when its transaction
has committed, and a snapshot taken later sees every transaction an earlier one saw. So
the rows not visible in ``done`` but visible in ``win`` are exactly the rows that
committed in between, however long their transactions ran and whatever seq they drew.
(A high-water mark on ``seq`` would skip a row whose transaction drew a low seq and
committed late.) How "not visible in ``done``" is read without rereading what was
delivered: :func:`scan_bounds`.

Why per-aggregate order holds: ``publish()`` takes a transaction-scoped lock on the
aggregate, so the transactions of one aggregate commit one after the other and each draws
its seq after the previous one committed. Within a window, seq order is therefore commit
order per aggregate, and an aggregate's rows are all in one shard (the shard is a hash of
the aggregate id), so the stream order keeps it; across windows, an earlier window holds
only transactions that committed earlier. docs/ordering.md has the lock's half of the argument.

Why a crash loses nothing: progress is written after Kafka acknowledged the rows it
covers, on the session that holds the shard's lock; a crash before that write means the
rows are read again (duplicates, never a gap).

Rows the relay takes off the fast path (a failed delivery, or held behind an earlier
failed row of the aggregate) get ``last_error`` set; from then on their own columns
(``published_at``, ``failed_at``) tell their state, and the window read skips them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.rows import POSITION

# A snapshot in which no transaction is visible: nothing delivered yet.
NOTHING = "1:1:"

# scan_bounds: in-progress ids more than RANGE_XIDS behind xmax(done), at most PROBED_XIDS
# of them, are looked up one by one rather than scanned past.
RANGE_XIDS = 128
PROBED_XIDS = 2

# A row's place in its window's stream order: (shard, seq).
Position = tuple[int, int]
# The largest seq: ``upto`` of a shard every row of which was read already.
MAX_SEQ = 2**63 - 1


@dataclass
class ShardCursor:
    """One row of ``<outbox>_relay_cursor``."""

    done: str = NOTHING
    win: str | None = None
    upto: int = 0


@dataclass
class Window:
    """One shard group's window being read: each shard's window snapshot, and progress."""

    wins: dict[int, str]
    # shards whose cursor must move to their window once it is complete: those with rows
    # read so far, and those that came with a window already open (a previous owner's)
    touched: set[int] = field(default_factory=set)
    # position of the last row read (rows up to it were handed out in batches); None
    # before the first
    read_upto: Position | None = None
    # every row of the window has been read
    exhausted: bool = False


def open_window(shards: Sequence[int], cursors: dict[int, ShardCursor],
                snapshot: str) -> Window:
    """A new window over ``shards``: a shard continues its open window, others use
    ``snapshot`` (taken by the statement that read the first rows)."""
    wins = {s: cursors[s].win or snapshot for s in shards}
    return Window(wins=wins, touched={s for s in shards if cursors[s].win is not None})


def scan_bounds(done: str) -> tuple[int, list[int]]:
    """How to find a shard's rows whose transaction is not visible in the snapshot ``done``
    (``xmin:xmax:xip,...``): scan ``ix_<table>_window`` from txid ``lo`` (skipping what
    is visible), and look up each id of ``probes`` (the in-progress ids below ``lo``).

    Exact for any ``lo`` between xmin and xmax: a transaction below xmax that is not in
    xip had ended when ``done`` was taken, so its rows were delivered. The choice of ``lo``
    is only about cost. Scanning from xmin rereads every row committed since the oldest
    writer still running began, anywhere in the cluster: with one transaction left open
    and 100,000 rows after it, 22-39 ms per empty window. Looking up every in-progress id
    costs one probe per id and shard: 100 concurrent writers, 20 ms. So the few oldest ids
    (at most PROBED_XIDS, each more than RANGE_XIDS behind xmax) are looked up, and the
    scan starts at the next one.
    """
    xmin_text, xmax_text, xip_text = done.split(":")
    xmin, xmax = int(xmin_text), int(xmax_text)
    xip = sorted(int(x) for x in xip_text.split(",") if x)
    next_in_progress = xip[PROBED_XIDS] if len(xip) > PROBED_XIDS else xmax
    lo = max(xmin, min(xmax - RANGE_XIDS, next_in_progress))
    return lo, [x for x in xip if x < lo]


def read_params(shards: Sequence[int], cursors: dict[int, ShardCursor],
                wins: dict[int, str] | None, after: Position | None = None
                ) -> dict[str, str]:
    """Bound parameters of the window reads (``Queries.first_window_batch`` and
    ``Queries.declare_window``) and of the backlog count. ``wins`` None: shards without an
    open window read up to the statement's own snapshot. ``after``: read on after this
    position (rows up to it were handed out). Per shard an index scan from ``lo`` and a
    lookup of its ``probes`` (:func:`scan_bounds`; the backlog count takes them as one
    ``probe_*`` entry each, with its shard's window and ``upto``). The shards are read in
    ascending order, whatever order they are given in.

    Each is one delimited string (``,`` for numbers, ``;`` for snapshots, which contain
    commas; an empty snapshot is null), split by the query: psycopg takes 70-95 µs to adapt
    a list of 256 numbers or snapshots, which the relay paid several times per window.
    """
    shards = sorted(shards)
    bounds = {done: scan_bounds(done) for done in {cursors[s].done for s in shards}}
    done = [cursors[s].done for s in shards]
    win = [cursors[s].win if wins is None else wins[s] for s in shards]
    upto = [str(max(cursors[s].upto, _read_past(s, after))) for s in shards]
    probes = [(str(shard), str(xid), win[i] or "", upto[i]) for i, shard in enumerate(shards)
              for xid in bounds[done[i]][1]]
    return {
        "shards": ",".join(map(str, shards)),
        "done": ";".join(done),
        "win": ";".join(w or "" for w in win),
        "upto": ",".join(upto),
        "lo": ",".join(str(bounds[d][0]) for d in done),
        "probes": ";".join(" ".join(map(str, bounds[d][1])) for d in done),
        "probe_shards": ",".join(p[0] for p in probes),
        "probe_xids": ",".join(p[1] for p in probes),
        "probe_wins": ";".join(p[2] for p in probes),
        "probe_upto": ",".join(p[3] for p in probes),
    }


def _read_past(shard: int, after: Position | None) -> int:
    """The seq up to which ``shard``'s rows were read when the stream is at ``after``."""
    if after is None or shard > after[0]:
        return 0
    return after[1] if shard == after[0] else MAX_SEQ


def progress(cursors: dict[int, ShardCursor], window: Window, last: dict[int, int],
             complete: bool) -> dict[int, ShardCursor]:
    """The cursors to write after a batch settled.

    ``last``: for each shard of the batch's rows that are delivered or taken off the fast
    path, the seq of its last such row (rows in stream order, up to, not including, the
    first row that must be read again). ``complete``: that was the whole batch and the
    batch ended the window. Returns the new cursor of every shard that changed
    (``cursors`` is not modified).
    """
    if complete:
        return {shard: ShardCursor(done=window.wins[shard]) for shard in window.touched | set(last)}
    return {shard: ShardCursor(done=cursors[shard].done, win=window.wins[shard], upto=seq)
            for shard, seq in last.items()}


def last_seqs(rows: Sequence[Sequence[Any]]) -> dict[int, int]:
    """Each shard's last seq among ``rows`` (in stream order: its largest)."""
    return dict(map(POSITION, rows))


def in_stream_order(rows: Sequence[Sequence[Any]], after: Position | None) -> bool:
    """The rows' positions rise, from after ``after``: the order the window statements
    return (relay.sql). Checked on every batch read, so that a plan that returned another
    order would stop the relay rather than reorder an aggregate. (Positions are unique:
    seq is. Comparing with the sorted list costs ~0.1 µs a row; a pairwise loop, 0.2.)"""
    positions = list(map(POSITION, rows))
    if after is not None and positions and positions[0] <= after:
        return False
    return positions == sorted(positions)
