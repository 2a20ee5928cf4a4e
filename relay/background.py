"""The relay's side threads: NOTIFY wake-ups, backlog statistics, retention.

Each runs on a connection of its own, survives database outages with backoff, and stops
when ``stopping`` is set. None of them writes anything the loop relies on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from outbox.backoff import compute_backoff
from outbox.exit_codes import EXIT_WORKER_DIED
from outbox.settings import Settings
from relay.connections import connect, first_line
from relay.hints import Hints
from relay.metrics import Health, RelayMetrics
from relay.options import RelayOptions
from relay.queries import Queries, read_backlog

log = logging.getLogger("outbox.relay")


def start(name: str, target: Callable[[], None],
          died: Callable[[str, Exception], None]) -> threading.Thread:
    """A daemon thread running ``target``; if ``target`` raises (anything it does not
    handle itself: a bug, a privilege revoked), ``died(name, exception)`` is called, so
    the relay can stop instead of running on without it."""
    def run() -> None:
        try:
            target()
        except Exception as exc:  # reported: the relay stops, not runs on without it
            died(name, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def failed(name: str, exc: Exception, health: Health, stopping: threading.Event) -> bool:
    """A side thread ended by an exception: unhealthy at once and True (the relay drains
    and exits 7 rather than running on without it); False during shutdown, when its
    connection closing under it lost nothing."""
    if stopping.is_set() and isinstance(exc, psycopg.Error):
        return False
    health.threads_ok = False
    health.detail = f"the {name} thread stopped: {first_line(exc)}"
    log.error("the %s thread stopped (%s: %s); stopping the relay", name, type(exc).__name__,
              first_line(exc), extra={"action": "thread_died", "side_thread": name,
                                      "exit_code": EXIT_WORKER_DIED})
    return True


def start_all(settings: Settings, queries: Queries, options: RelayOptions, hints: Hints,
              wake: threading.Event, metrics: RelayMetrics,
              owned: Callable[[], tuple[int, ...]], stopping: threading.Event,
              died: Callable[[str, Exception], None]) -> None:
    """The relay's side threads its options ask for: NOTIFY, statistics, retention."""
    if options.listen:
        start("relay-listen", lambda: listen(settings, queries, options.instance_id, hints,
                                             wake, stopping), died)
    start("relay-stats", lambda: stats(settings, queries, options.instance_id,
                                       options.stats_interval, metrics, owned, stopping), died)
    retention = options.retention_seconds
    if retention is not None:
        start("relay-purge", lambda: purge(settings, retention, options.purge_batch,
                                           options.purge_interval, stopping), died)


def listen(settings: Settings, queries: Queries, instance_id: str, hints: Hints,
           wake: threading.Event, stopping: threading.Event) -> None:
    """Note the shards each NOTIFY names (relay.hints) and wake the loop (a hint only:
    polling still finds every row)."""
    failures = 0
    app = f"outbox-relay-listen:{instance_id}"
    while not stopping.is_set():
        try:
            with connect(settings, app) as conn:
                conn.execute(queries.listen)
                failures = 0
                # Notifications sent while the connection was down are lost: look at every
                # shard once instead of waiting for the next poll.
                hints.add("")
                wake.set()
                while not stopping.is_set():
                    for note in conn.notifies(timeout=1.0, stop_after=1):
                        hints.add(note.payload)
                        wake.set()
        except psycopg.OperationalError as exc:
            if stopping.is_set():
                return  # the database went away during shutdown: nothing to wake
            failures += 1
            log.warning("LISTEN connection lost: %s", first_line(exc),
                        extra={"action": "listen_unavailable"})
            stopping.wait(compute_backoff(failures))


# The backlog statistics' share of the time at most: counting reads every pending row
# (~0.9 µs a row: 0.27 s for 300,000), so under a large backlog a fixed interval would keep
# PostgreSQL busy counting (10 million rows, extrapolated: ~9 s of every 14).
STATS_DUTY = 0.05


def stats_wait(interval: float, took: float) -> float:
    """Seconds until the next backlog count: ``interval``, or longer when the last count
    took ``took`` seconds, so that counting takes at most STATS_DUTY of the time."""
    return max(interval, took * (1 - STATS_DUTY) / STATS_DUTY)


def stats(settings: Settings, queries: Queries, instance_id: str, interval: float,
          metrics: RelayMetrics, owned: Callable[[], tuple[int, ...]],
          stopping: threading.Event) -> None:
    """Backlog and oldest pending age of the owned shards, on a connection of its own:
    counting a large backlog takes a while, and the loop has better things to do."""
    conn: psycopg.Connection[tuple[Any, ...]] | None = None
    app = f"outbox-relay-stats:{instance_id}"
    failures = 0
    took = 0.0
    # First figures half a second after start; then every interval (longer when counting
    # takes long: stats_wait), and after a failure with backoff (a database outage is
    # logged by the loop already).
    while not stopping.wait(compute_backoff(failures) if failures
                            else stats_wait(interval, took) if conn else 0.5):
        try:
            if conn is None:
                conn = connect(settings, app, reads_outbox=True)
            started = time.monotonic()
            count, age = read_backlog(conn, queries, list(owned()))
            took = time.monotonic() - started
            metrics.backlog.set(float(count))
            metrics.oldest_age.set(age if age is not None else 0.0)
            failures = 0
        except psycopg.Error as exc:
            failures += 1
            log.warning("backlog statistics failed: %s", first_line(exc),
                        extra={"action": "stats_failed", "attempt": failures})
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            conn = None
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


def purge(settings: Settings, older_than: float, batch: int, interval: float,
          stopping: threading.Event) -> None:
    """Delete delivered rows older than ``older_than`` seconds, every ``interval``."""
    from relay.retention import purge as purge_once

    failures = 0
    while not stopping.wait(0 if failures == 0 else compute_backoff(failures)):
        try:
            purge_once(settings, older_than, batch_size=batch, stop=stopping)
            failures = 0
        except psycopg.OperationalError as exc:
            failures += 1
            log.warning("purge failed: %s", first_line(exc), extra={"action": "purge_failed"})
            continue
        if stopping.wait(interval):
            return
