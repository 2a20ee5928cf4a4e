"""``outbox connect exporter``: the CDC path's health as Prometheus metrics.

Debezium's progress lives in two places nobody scrapes: PostgreSQL's replication slots
(how far the connector has confirmed, whether anything streams from the slot) and Kafka
Connect's REST API (connector and task state). ``outbox connect status`` prints both on
demand; this exporter reads them at every scrape and serves ``/metrics`` and ``/health``,
so an alert can say "the slot is 2 GB behind" or "the task FAILED" before the disk fills.

Every scrape reads both sources afresh (one short database session, two REST calls per
connector): there is no state to go stale, and a source that cannot be read is reported
by ``outbox_cdc_up{source=...} 0`` instead of by missing series. deploy/ has the alert
rules; docs/monitoring.md says what each metric means.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import httpx
import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connect.client import ConnectClient, ConnectError
from connect.config import CONNECTOR_CLASS, CdcOptions, render
from outbox import http
from outbox.cli_options import DURATION, PORT, CliError, settings_options
from outbox.errors import ServiceUnavailableError, first_line
from outbox.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_WORKER_DIED
from outbox.preflight import check_database
from outbox.settings import Settings, redact_url, scrub

log = logging.getLogger("outbox.connect.exporter")

# Kafka Connect's states (AbstractStatus.State), plus MISSING: Connect has no connector
# of that name (deleted, or never applied). Every state is exported, 1 for the current one.
CONNECTOR_STATES = ("RUNNING", "PAUSED", "STOPPED", "FAILED", "UNASSIGNED", "RESTARTING",
                    "MISSING")
TASK_STATES = ("RUNNING", "PAUSED", "FAILED", "UNASSIGNED", "RESTARTING")

# Logical slots of this database: how far each trails the WAL. confirmed_flush_lsn is what
# the consumer (Debezium) has acknowledged; restart_lsn is the oldest WAL the slot keeps,
# i.e. what it stops PostgreSQL from recycling.
SLOTS_SQL = """
select slot_name, active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint as lag_bytes,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint as retained_bytes
  from pg_replication_slots
 where slot_type = 'logical' and database = current_database()
 order by slot_name
"""


@dataclass(frozen=True)
class Slot:
    """One replication slot as PostgreSQL reports it (lags are None before its first flush)."""

    name: str
    active: bool
    lag_bytes: int | None
    retained_bytes: int | None


@dataclass(frozen=True)
class ConnectorStatus:
    """One connector as Kafka Connect reports it: state MISSING when Connect has none."""

    name: str
    slot: str
    state: str
    task_states: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """What one scrape read; a source that failed has its error instead of its data."""

    slots: list[Slot] = field(default_factory=list)
    connectors: list[ConnectorStatus] = field(default_factory=list)
    postgres_error: str | None = None
    connect_error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def read_slots(settings: Settings, timeout: float = 5.0) -> list[Slot]:
    """Every logical replication slot of the configured database."""
    with psycopg.connect(settings.libpq_url(), connect_timeout=max(1, round(timeout)),
                         application_name="outbox-cdc-exporter") as conn:
        conn.execute(f"set statement_timeout = {int(timeout * 1000)}")
        return [Slot(str(name), bool(active), lag, retained)
                for name, active, lag, retained in conn.execute(SLOTS_SQL)]


def read_connector(client: ConnectClient, settings: Settings, name: str) -> ConnectorStatus:
    """The connector's state, its tasks' states and the slot it streams from."""
    status = client.status(name)
    config = client.get_config(name) if status is not None else None
    # The slot named in Connect's copy of the configuration is the truth; a connector that
    # is gone still names the slot `outbox connect apply` would give it, which may be left.
    slot = (config or {}).get("slot.name") or render(settings, CdcOptions(name=name))["slot.name"]
    if status is None:
        return ConnectorStatus(name, slot, "MISSING")
    tasks = tuple(str(t.get("state", "UNASSIGNED")) for t in status.get("tasks", []))
    return ConnectorStatus(name, slot, str(status["connector"]["state"]), tasks)


def streaming_this_database(client: ConnectClient, settings: Settings) -> list[str]:
    """Connectors Connect runs with Debezium's PostgreSQL class on the configured database
    (what the exporter reports on when no ``--name`` is given)."""
    dbname = unquote(urlsplit(settings.libpq_url()).path.strip("/"))
    try:
        # ConnectClient has no list call; its HTTP client is public and carries the base URL.
        response = client.http.get("/connectors", params={"expand": "info"})
        response.raise_for_status()
        listing: dict[str, Any] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ConnectError(f"Kafka Connect at {client.url}: listing connectors failed "
                           f"({exc})") from None
    return sorted(name for name, entry in listing.items()
                  if entry.get("info", {}).get("config", {}).get("connector.class")
                  == CONNECTOR_CLASS
                  and entry["info"]["config"].get("database.dbname") == dbname)


def read_snapshot(settings: Settings, client: ConnectClient, names: Iterable[str],
                  timeout: float = 5.0) -> Snapshot:
    """Both sources; an error in one is recorded (scrubbed of secrets), never raised.
    No ``names``: the connectors :func:`streaming_this_database` finds."""
    snap = Snapshot()
    started = time.perf_counter()
    try:
        snap.slots = read_slots(settings, timeout)
    except psycopg.Error as exc:
        snap.postgres_error = scrub(first_line(exc), settings)
    snap.seconds["postgres"] = time.perf_counter() - started
    started = time.perf_counter()
    try:
        wanted = list(names) or streaming_this_database(client, settings)
        snap.connectors = [read_connector(client, settings, name) for name in wanted]
    except ConnectError as exc:
        snap.connect_error = scrub(str(exc), settings)
    snap.seconds["connect"] = time.perf_counter() - started
    return snap


def families(snap: Snapshot) -> Iterator[Metric]:
    """The Prometheus metric families of one snapshot (pure: no I/O)."""
    up = GaugeMetricFamily("outbox_cdc_up", "1 if the last read of the source succeeded",
                           labels=["source"])
    up.add_metric(["postgres"], 0.0 if snap.postgres_error else 1.0)
    up.add_metric(["connect"], 0.0 if snap.connect_error else 1.0)
    yield up
    took = GaugeMetricFamily("outbox_cdc_read_seconds", "How long reading the source took",
                             labels=["source"])
    for source, seconds in sorted(snap.seconds.items()):
        took.add_metric([source], seconds)
    yield took
    lag = GaugeMetricFamily("outbox_cdc_slot_lag_bytes",
                            "WAL bytes between the current position and the slot's "
                            "confirmed_flush_lsn (what the connector has not confirmed)",
                            labels=["slot"])
    retained = GaugeMetricFamily("outbox_cdc_slot_retained_bytes",
                                 "WAL bytes the slot keeps from being recycled "
                                 "(current position minus restart_lsn)", labels=["slot"])
    active = GaugeMetricFamily("outbox_cdc_slot_active",
                               "1 if a connection streams from the slot", labels=["slot"])
    for slot in snap.slots:
        if slot.lag_bytes is not None:
            lag.add_metric([slot.name], float(slot.lag_bytes))
        if slot.retained_bytes is not None:
            retained.add_metric([slot.name], float(slot.retained_bytes))
        active.add_metric([slot.name], 1.0 if slot.active else 0.0)
    yield from (lag, retained, active)
    if snap.postgres_error is None:
        # Only when the slots were read: "missing" must mean missing, not "could not look".
        present = GaugeMetricFamily("outbox_cdc_connector_slot_exists",
                                    "1 if the replication slot the connector streams from "
                                    "exists", labels=["connector", "slot"])
        names = {slot.name for slot in snap.slots}
        for conn in snap.connectors:
            present.add_metric([conn.name, conn.slot], 1.0 if conn.slot in names else 0.0)
        yield present
    state = GaugeMetricFamily("outbox_cdc_connector_state",
                              "1 for the connector's current state in Kafka Connect "
                              "(MISSING: no connector of that name)",
                              labels=["connector", "state"])
    tasks = GaugeMetricFamily("outbox_cdc_connector_tasks",
                              "The connector's tasks in each state", labels=["connector", "state"])
    for conn in snap.connectors:
        for name in CONNECTOR_STATES:
            state.add_metric([conn.name, name], 1.0 if conn.state == name else 0.0)
        for name in TASK_STATES:
            tasks.add_metric([conn.name, name], float(conn.task_states.count(name)))
    yield from (state, tasks)


class CdcCollector(Collector):
    """Reads PostgreSQL and Kafka Connect at every scrape (prometheus_client calls
    :meth:`collect` once per ``/metrics`` request)."""

    def __init__(self, settings: Settings, names: list[str], timeout: float = 5.0) -> None:
        self.settings = settings
        self.names = names
        self.timeout = timeout
        # No waiting out a Connect rebalance inside a scrape: that scrape reports connect 0.
        self.client = ConnectClient(settings.connect_url, timeout=timeout, rebalance_wait=0)

    def snapshot(self) -> Snapshot:
        """Read both sources now."""
        return read_snapshot(self.settings, self.client, self.names, self.timeout)

    def collect(self) -> Iterator[Metric]:
        yield from families(self.snapshot())

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no collect() at registration: that would be a scrape

    def health(self) -> tuple[bool, dict[str, object]]:
        """``/health``: 200 when both sources answer, 503 with what failed otherwise."""
        snap = self.snapshot()
        ok = snap.postgres_error is None and snap.connect_error is None
        return ok, {"status": "ok" if ok else "unhealthy",
                    "postgres": snap.postgres_error or "ok",
                    "connect": snap.connect_error or "ok",
                    "connectors": {c.name: c.state for c in snap.connectors}}


def _preflight(settings: Settings, names: list[str]) -> None:
    """Fail at start on what a restart cannot fix; only warn about a server that is down
    (the exporter exists to report that)."""
    settings.require_database_url()
    for name in names:
        render(settings, CdcOptions(name=name))  # a URL Debezium cannot use fails here
    try:
        check_database(settings)
    except ServiceUnavailableError as exc:
        log.warning("%s; serving anyway (outbox_cdc_up{source=\"postgres\"} is 0)", exc,
                    extra={"action": "exporter_source_down"})


@click.command("exporter")
@click.option("--name", "names", multiple=True,
              help="connector to report on (repeatable; one that is missing is reported "
                   "MISSING); default: every Debezium PostgreSQL connector on this database")
@click.option("--port", type=PORT, default=9102, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 in a container)")
@click.option("--timeout", type=DURATION, default=5.0, show_default=True,
              help="how long a scrape waits for PostgreSQL or Kafka Connect")
@settings_options(log_format="json", log_level="info")
def exporter(settings: Settings, names: tuple[str, ...], port: int, host: str,
             timeout: float) -> None:
    """Serve /metrics (replication slot lag, connector and task state) and /health.

    Exit codes: 0 stopped by SIGTERM/SIGINT, 2 usage, 3 configuration rejected (one line
    says why), 7 the HTTP server thread died.
    """
    # httpx logs every request at INFO: two lines per connector per scrape.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _preflight(settings, list(names))  # ConfigurationError: one line, exit 3
    collector = CdcCollector(settings, list(names), timeout)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server = http.serve(registry, collector.health, host, port, name="cdc-exporter")
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                       "--port", EXIT_CONFIG) from None
    log.info("CDC exporter on http://%s:%d/metrics for %s (database %s, Connect %s)", host,
             port, ", ".join(names) or "the connectors on this database",
             redact_url(settings.database_url), redact_url(settings.connect_url),
             extra={"action": "exporter_listening"})
    sys.exit(_serve_until_signal(server))


def _serve_until_signal(server: Any) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name,
                 extra={"action": "exporter_stopping"})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stop.wait(1.0):
        if not any(t.name == "cdc-exporter" and t.is_alive() for t in threading.enumerate()):
            log.error("the HTTP server thread stopped; exiting",
                      extra={"action": "exporter_worker_died"})
            return EXIT_WORKER_DIED
    server.shutdown()
    return EXIT_OK
