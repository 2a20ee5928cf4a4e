"""``outbox relay run | retry-failed | install-notify``, ``outbox status``, ``outbox purge``."""

from __future__ import annotations

import json
import logging
import socket
import sys
import uuid
from collections import defaultdict
from dataclasses import replace
from typing import Any

import click
import psycopg

from outbox import kafka, preflight
from outbox.cli_options import (
    DURATION,
    PORT,
    cannot_serve_metrics,
    format_duration,
    settings_options,
)
from outbox.errors import ConfigurationError, OutboxError, ServiceUnavailableError
from outbox.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_UNAVAILABLE
from outbox.names import SHARD_COUNT
from outbox.settings import Settings, redact_url
from outbox.signals import drain_on_signals
from relay.loop import Relay, RelayOptions
from relay.queries import Queries, read_backlog
from relay.retention import check_captured
from relay.retention import purge as purge_rows
from relay.supervisor import Supervisor, default_processes, watch_parent

log = logging.getLogger("outbox.relay")


@click.group()
def relay() -> None:
    """The relay daemon that publishes outbox rows to Kafka."""


@relay.command()
@settings_options(log_format="json", log_level="info", daemon=True)
@click.option("--batch-size", default=2000, show_default=True, help="rows per claim")
@click.option("--poll-interval", type=DURATION, default=1.0, show_default=True,
              help="time between polls when no NOTIFY arrives (the guarantee); a bare "
                   "number is seconds, or 250ms, 2s ...")
@click.option("--listen/--no-listen", default=True, show_default=True,
              help="wake on LISTEN/NOTIFY (a hint; turn off behind PgBouncer)")
@click.option("--pipeline-depth", default=2, show_default=True,
              help="batches in flight at once (each on its own group of shards)")
@click.option("--max-attempts", default=5, show_default=True,
              help="permanent delivery failures before a row is parked (failed)")
@click.option("--progress-interval", type=DURATION, default=0.2, show_default=True,
              help="time between writes of delivery progress (a crash re-sends at most "
                   "about this much)")
@click.option("--rebalance-interval", type=DURATION, default=2.0, show_default=True,
              help="time between shard ownership checks (takeover delay)")
@click.option("--shutdown-timeout", type=DURATION, default=30.0, show_default=True,
              help="time to wait for in-flight deliveries on SIGTERM/SIGINT")
@click.option("--startup-timeout", type=DURATION, default=10.0, show_default=True,
              help="how long the start-up checks wait for the database and for the broker")
@click.option("--metrics-port", type=PORT, default=None,
              help="serve /metrics and /health on this port (off by default)")
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--retention", type=DURATION, default=None,
              help="also purge delivered rows older than this (e.g. 7d), every "
                   "--purge-interval; 0 purges every delivered row (nothing kept to replay)")
@click.option("--purge-interval", type=DURATION, default=60.0, show_default=True,
              help="time between purges with --retention")
@click.option("--processes", type=int, default=None,
              help="relay processes sharing the shards under this one (default: the "
                   "number of CPUs, at most 4; up to 256); 1: this process is the relay")
def run(*, settings: Settings, batch_size: int, poll_interval: float, listen: bool,
        pipeline_depth: int, max_attempts: int, progress_interval: float,
        rebalance_interval: float, shutdown_timeout: float, startup_timeout: float,
        metrics_port: int | None, metrics_host: str, retention: float | None,
        purge_interval: float, processes: int | None) -> None:
    """Run the relay until SIGTERM/SIGINT (first: drain and exit 0; second: exit now).

    Several relay processes by default (--processes), each owning a share of the shards,
    under this process, which forwards the signals and stops them all if one dies (each
    serves --metrics-port plus its index). Before it calls itself healthy it checks that
    the database lets it in and that the broker answers (--startup-timeout). Exit codes:
    0 stopped cleanly, 1 unexpected error, 2 usage, 3 configuration, 4 stopped with
    deliveries unconfirmed (they are re-sent later), 6 the database or the broker did not
    answer at start, 7 a relay process died, 130 second signal.
    """
    count = default_processes() if processes is None else processes
    try:
        settings.require_database_url()
        if batch_size < 1 or pipeline_depth < 1 or max_attempts < 1:
            raise ConfigurationError(
                "--batch-size, --pipeline-depth and --max-attempts must be at least 1 "
                f"(got {batch_size}, {pipeline_depth}, {max_attempts})")
        if not 1 <= count <= SHARD_COUNT:
            raise ConfigurationError(f"--processes must be between 1 and {SHARD_COUNT} "
                                     f"(got {count})")
        if metrics_port and metrics_port + count - 1 > 65535:
            raise ConfigurationError(f"--metrics-port {metrics_port} with {count} processes "
                                     "needs ports up to "
                                     f"{metrics_port + count - 1}: choose a lower one")
    except ConfigurationError as exc:
        _stop(EXIT_CONFIG, str(exc))
    options = RelayOptions(
        batch_size=batch_size, poll_interval=poll_interval, listen=listen,
        pipeline_depth=pipeline_depth, max_attempts=max_attempts,
        rebalance_interval=rebalance_interval, shutdown_timeout=shutdown_timeout,
        progress_interval=progress_interval, retention_seconds=retention,
        purge_interval=purge_interval)
    log.info("database %s, Kafka %s", redact_url(settings.require_database_url()),
             settings.kafka_bootstrap_servers, extra={"action": "relay_config"})
    if kept := kafka.replaced(settings.producer_config()):
        log.warning("Kafka properties replaced by the relay's own (per-aggregate order and "
                    "acknowledged meaning durable need them): %s", ", ".join(kept),
                    extra={"action": "kafka_config_replaced"})
    if count == 1:
        sys.exit(_run_relay(settings, options, metrics_host, metrics_port, startup_timeout))
    # Several: every check here, once, before any process starts (one line if one fails);
    # meanwhile /health on the first process's port says so.
    server = None
    if metrics_port is not None:
        from relay.metrics import Health, RelayMetrics, serve

        health = Health()
        health.detail = "start-up checks"
        try:
            server = serve(RelayMetrics(), health, metrics_host, metrics_port)
        except OSError as exc:
            _metrics_port_error(metrics_host, metrics_port, exc)
        for index in range(1, count if metrics_port else 1):
            _check_port(metrics_host, metrics_port + index)
    _start_up_checks(settings, startup_timeout, schema=True,
                     deletes=options.retention_seconds is not None)
    if server is not None:
        server.shutdown()  # before the fork: no thread of it left in the children
        server.server_close()

    def child(index: int, stop_fd: int) -> int:
        port = None if metrics_port is None else metrics_port + index if metrics_port else 0
        own = replace(options, instance_id=uuid.uuid4().hex[:8], siblings=count)
        return _run_relay(settings, own, metrics_host, port, None, stop_fd)

    sys.exit(Supervisor(count, child).run())


def _run_relay(settings: Settings, options: RelayOptions, metrics_host: str,
               metrics_port: int | None, startup_timeout: float | None,
               stop_fd: int | None = None) -> int:
    """One relay in this process until it stops; its exit code. ``startup_timeout`` None:
    the start-up checks were done (by the supervisor); ``stop_fd``: its pipe."""
    daemon = Relay(settings, options)
    if metrics_port is not None:
        _serve_metrics(daemon, metrics_host, metrics_port)
    if startup_timeout is not None:
        daemon.health.detail = "start-up checks"
        _start_up_checks(settings, startup_timeout)
    drain_on_signals(daemon.request_stop, log, "relay")
    if stop_fd is not None:
        watch_parent(stop_fd, daemon.request_stop)
    try:
        return daemon.run()
    except Exception:
        log.exception("relay crashed", extra={"action": "relay_crash"})
        return EXIT_ERROR


def _start_up_checks(settings: Settings, timeout: float, schema: bool = False,
                     deletes: bool = False) -> None:
    """The database lets us in and the broker answers (and, with ``schema``, the relay's
    tables exist and its role may use them, ``deletes``: delete from the outbox too); else
    one line and the exit code."""
    try:
        preflight.check_database(settings, timeout=timeout)
        preflight.check_kafka(settings, timeout=timeout)
        if schema:
            with psycopg.connect(settings.libpq_url(), autocommit=True,
                                 connect_timeout=max(1, int(timeout))) as conn:
                problem = Queries.for_settings(settings).relay_problem(conn, deletes)
            if problem is not None:
                raise ConfigurationError(problem)
    except ConfigurationError as exc:
        _stop(EXIT_CONFIG, str(exc))
    except ServiceUnavailableError as exc:
        _stop(EXIT_UNAVAILABLE, str(exc))


def _check_port(host: str, port: int) -> None:
    """Whether ``host:port`` can be served (checked before the relay processes start)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            _metrics_port_error(host, port, exc)


def _stop(code: int, message: str) -> None:
    """One log line saying why the relay cannot start, then exit with ``code``."""
    log.error("%s", message, extra={"action": "config_error" if code == EXIT_CONFIG
                                    else "service_unavailable", "exit_code": code})
    sys.exit(code)


def _metrics_port_error(host: str, port: int, exc: OSError) -> None:
    _stop(EXIT_CONFIG, cannot_serve_metrics(host, port, exc))


def _serve_metrics(daemon: Relay, host: str, port: int) -> None:
    from relay.metrics import serve

    try:
        serve(daemon.metrics, daemon.health, host, port)
    except OSError as exc:
        _metrics_port_error(host, port, exc)
    log.info("metrics on http://%s:%d/metrics and /health", host, port,
             extra={"action": "metrics_listening"})


@relay.command("retry-failed")
@settings_options
@click.option("--aggregate-type", default=None, help="only rows of this aggregate type")
@click.option("--aggregate-id", default=None, help="only rows of this aggregate id")
def retry_failed(settings: Settings, aggregate_type: str | None,
                 aggregate_id: str | None) -> None:
    """Un-park failed rows (attempts reset) so the relay sends them again, in order."""
    queries = Queries.for_settings(settings)
    with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
        count = conn.execute(queries.retry_failed, {
            "aggregatetype": aggregate_type, "aggregateid": aggregate_id}).rowcount
    click.echo(f"{count} failed rows queued for another attempt")


@relay.command("install-notify")
@settings_options
@click.option("--drop", is_flag=True, help="remove the trigger instead")
def install_notify(settings: Settings, drop: bool) -> None:
    """Add (or --drop) the statement-level trigger that NOTIFYs relays after inserts.

    Optional: without it the relay finds rows by polling (--poll-interval).
    """
    queries = Queries.for_settings(settings)
    with psycopg.connect(settings.libpq_url(), autocommit=True) as conn:
        problem = queries.schema_problem(conn)
        if problem is not None and not drop:
            raise ConfigurationError(problem)
        conn.execute(queries.drop_notify_trigger if drop else queries.notify_trigger)
    click.echo(f"notify trigger {'dropped from' if drop else 'installed on'} "
               f"{queries.name} (channel {queries.channel})")


def compress_ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts: list[str] = []
    start = prev = None
    for n in sorted(numbers):
        if start is None:
            start = prev = n
        elif prev is not None and n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = n
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(parts)


# A writing transaction open this long is worth a line in `outbox status` (relay.window).
LONG_TRANSACTION_SECONDS = 60.0


def collect_status(settings: Settings, failed_limit: int = 20) -> dict[str, Any]:
    """Backlog, oldest pending age, failed rows and shard owners, as plain data."""
    queries = Queries.for_settings(settings)
    with psycopg.connect(settings.libpq_url(), autocommit=True,
                         application_name="outbox-status") as conn:
        problem = queries.schema_problem(conn)
        if problem is not None:
            raise ConfigurationError(problem)
        count, age = read_backlog(conn, queries)
        failed_row = conn.execute(queries.failed_count).fetchone()
        retrying = conn.execute(queries.retrying_count).fetchone()
        writer = conn.execute(queries.oldest_writer).fetchone()
        failed = conn.execute(queries.failed_rows, {"limit": failed_limit}).fetchall()
        owners: dict[str, list[int]] = defaultdict(list)
        for shard, pid, app in conn.execute(queries.shard_owners).fetchall():
            owners[f"{app or 'unknown'} (pid {pid})"].append(int(shard))
    return {
        "table": queries.name,
        "backlog": int(count),
        "oldest_pending_age_seconds": float(age) if age is not None else None,
        "retrying": int(retrying[0]) if retrying else 0,
        "oldest_writing_transaction_seconds": (
            float(writer[0]) if writer and writer[0] is not None else None),
        "failed": int(failed_row[0]) if failed_row else 0,
        "failed_rows": [
            {"seq": r[0], "id": str(r[1]), "aggregatetype": r[2], "aggregateid": r[3],
             "type": r[4], "attempts": r[5], "failed_at": r[6].isoformat() if r[6] else None,
             "last_error": r[7]} for r in failed],
        "shard_owners": {k: compress_ranges(v) for k, v in sorted(owners.items())},
        "shards_owned": sum(len(v) for v in owners.values()),
    }


@click.command()
@settings_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def status(settings: Settings, as_json: bool) -> None:
    """Backlog, oldest unpublished age, failed rows, shard owners."""
    info = collect_status(settings)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    age = info["oldest_pending_age_seconds"]
    click.echo(f"table:            {info['table']}")
    click.echo(f"backlog:          {info['backlog']} pending rows")
    click.echo(f"oldest pending:   {'-' if age is None else f'{age:.1f}s'}")
    click.echo(f"retrying:         {info['retrying']} rows (after a failed delivery)")
    writer = info["oldest_writing_transaction_seconds"]
    if writer is not None and writer >= LONG_TRANSACTION_SECONDS:
        click.echo(f"long transaction: one has been writing for {writer:.0f}s; until it ends "
                   "VACUUM cannot reclaim purged outbox rows, and events it wrote wait for "
                   "its commit")
    click.echo(f"failed (parked):  {info['failed']}")
    for row in info["failed_rows"]:
        click.echo(f"  seq {row['seq']} {row['aggregatetype']}/{row['aggregateid']} "
                   f"{row['type']} attempts={row['attempts']}: {row['last_error']}")
    if info["failed"]:
        click.echo("  fix the cause, then: outbox relay retry-failed [--aggregate-id ID]")
    click.echo(f"shards owned:     {info['shards_owned']} of 256")
    for owner, ranges in info["shard_owners"].items():
        click.echo(f"  {owner}: {ranges}")


@click.command()
@settings_options
@click.option("--older-than", type=DURATION, required=True,
              help="delete rows published longer ago than this (e.g. 7d, 12h, 30m; a bare "
                   "number is seconds)")
@click.option("--batch-size", default=1000, show_default=True,
              help="rows per delete (each its own short transaction)")
@click.option("--cdc", is_flag=True,
              help="Debezium delivers this outbox (it never marks rows): delete every row "
                   "created before the cutoff. Refused without a logical replication slot "
                   "in the database or while a relay of the table is connected")
def purge(settings: Settings, older_than: float, batch_size: int, cdc: bool) -> None:
    """Delete published outbox rows older than the retention, in small batches."""
    try:
        if cdc:
            check_captured(settings)
        total = purge_rows(settings, older_than, batch_size=batch_size, captured=cdc)
    except ValueError as exc:  # refused: one line saying why
        raise OutboxError(str(exc)) from None
    kind = "captured" if cdc else "published"
    click.echo(f"purged {total} {kind} rows older than {format_duration(older_than)}")
