"""The ``outbox-saga`` command line: one service of the order saga per process.

    outbox-saga setup                 # schemas, outboxes, inboxes, tables, demo stock
    outbox-saga relay                 # one relay for the four outboxes
    outbox-saga order-api --port 8000 # HTTP API + the order service's consumer
    outbox-saga inventory | payment | shipping
    outbox-saga retry ORDER_ID        # re-send a stuck order's events (consumers dedupe)

Every daemon checks at start that the database lets it in and the broker answers (within
10 s): a problem is one log line and exit code 3 (configuration) or 6 (unavailable). A
worker thread that stops on its own stops its process with exit code 7; each daemon has
``/health`` (``--metrics-port``; the order API also on its own port). Exit codes:
:mod:`outbox.exit_codes`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import click
import psycopg
from prometheus_client import CollectorRegistry, Gauge

from consumers.worker_cli import run_worker
from outbox import http
from outbox.cli_options import PORT, settings_options
from outbox.errors import ConfigurationError, ServiceUnavailableError
from outbox.exit_codes import EXIT_CONFIG, EXIT_UNAVAILABLE
from outbox.logs import configure_logging
from outbox.preflight import check_database, check_kafka
from outbox.settings import Settings
from relay.replay import ReplayFilter, replay
from services.gateway import SimulatedGateway
from services.runtime import CONSUMERS, RelayGroup, for_service, make_engine, prepare_database
from services.supervisor import Supervisor
from services.tables import SCHEMAS

log = logging.getLogger("outbox.saga")
T = TypeVar("T")
STARTUP_TIMEOUT = 10.0


def _logging() -> None:
    # JSON lines like every daemon of the toolkit; librdkafka's lines too, through the logger
    configure_logging("json", "info")


def _start_up(settings: Settings, relays: RelayGroup | None = None) -> None:
    """The database lets us in and the broker answers (and the outboxes exist), or the
    process exits with one line and its exit code."""
    try:
        check_database(settings, timeout=STARTUP_TIMEOUT)
        check_kafka(settings, timeout=STARTUP_TIMEOUT)
        if relays is not None:
            relays.check_tables()
    except ConfigurationError as exc:
        log.error("%s", exc, extra={"action": "config_error"})
        sys.exit(EXIT_CONFIG)
    except (ServiceUnavailableError, psycopg.Error) as exc:
        log.error("%s", str(exc).strip().splitlines()[0], extra={"action": "startup_unavailable"})
        sys.exit(EXIT_UNAVAILABLE)


def _listen(what: str, start: Callable[[], T]) -> T:
    """``start()`` a listener, or exit with one line if its port cannot be had."""
    try:
        return start()
    except OSError as exc:
        log.error("%s: %s; choose another port", what, exc.strerror or exc,
                  extra={"action": "config_error"})
        sys.exit(EXIT_CONFIG)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _alive(thread: threading.Thread | None) -> Callable[[], float]:
    return lambda: float(thread is not None and thread.is_alive())


def _serve_health(supervisor: Supervisor, port: int, host: str) -> None:
    """``/health`` (every worker alive and healthy) and ``/metrics`` (which are up)."""
    registry = CollectorRegistry()
    up = Gauge("outbox_saga_worker_up", "1 while the worker thread runs", ["worker"],
               registry=registry)
    for worker in supervisor.workers:
        up.labels(worker.name).set_function(_alive(worker.thread))
    _listen(f"--metrics-port {port}",
            lambda: http.serve(registry, supervisor.health, host, port,
                               name="saga-http"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the order saga's services (order API, inventory, payment, shipping) and relay."""


@main.command()
@settings_options
def setup(settings: Settings) -> None:
    """Create each service's schema, outbox, inbox and tables; stock the warehouse."""
    prepare_database(settings)
    click.echo(f"saga schemas ready: {', '.join(SCHEMAS)}")


METRICS_PORT = click.option("--metrics-port", type=PORT, default=None,
                            help="serve Prometheus /metrics and /health on this port")
METRICS_HOST = click.option("--metrics-host", default="127.0.0.1", show_default=True,
                            envvar="OUTBOX_METRICS_HOST",
                            help="address of /metrics and /health (0.0.0.0 in a container) "
                                 "[env OUTBOX_METRICS_HOST]")


@main.command("relay")
@METRICS_PORT
@METRICS_HOST
@settings_options
def relay_command(settings: Settings, metrics_port: int | None, metrics_host: str) -> None:
    """One relay for all four service outboxes (SIGTERM drains and stops).

    If one of the relays stops on its own, the process stops with exit code 7.
    """
    _logging()
    relays = RelayGroup(settings)
    _start_up(settings, relays)
    supervisor = Supervisor()
    supervisor.install_signal_handlers()
    relays.start(supervisor)
    if metrics_port is not None:
        _serve_health(supervisor, metrics_port, metrics_host)
    supervisor.wait()
    sys.exit(supervisor.stop())


def _run_consumer(name: str, settings: Settings, metrics_port: int | None,
                  metrics_host: str, **kw: object) -> None:
    """The service's consumer through the worker runner (``outbox worker
    services.<name>:consumer`` does the same): logging, signals, /health, exit codes."""
    _logging()
    consumer = CONSUMERS[name](settings, make_engine(settings), **kw)
    sys.exit(run_worker(consumer, metrics_port, metrics_host))


@main.command()
@METRICS_PORT
@METRICS_HOST
@settings_options
def inventory(settings: Settings, metrics_port: int | None, metrics_host: str) -> None:
    """The inventory service (inventory-service-group on order-events, payment-events);
    the same as ``outbox worker services.inventory:consumer``."""
    _run_consumer("inventory", settings, metrics_port, metrics_host)


@main.command()
@click.option("--decline-rate", default=0.0, show_default=True,
              help="share of authorisations the simulated gateway declines")
@click.option("--latency", default=0.0, show_default=True,
              help="seconds the simulated gateway takes per authorisation")
@METRICS_PORT
@METRICS_HOST
@settings_options
def payment(settings: Settings, decline_rate: float, latency: float,
            metrics_port: int | None, metrics_host: str) -> None:
    """The payment service (payment-service-group on inventory-events)."""
    _run_consumer("payment", settings, metrics_port, metrics_host, gateway=SimulatedGateway(
        decline_rate=decline_rate, latency_seconds=latency, limit=Decimal("10000")))


@main.command()
@METRICS_PORT
@METRICS_HOST
@settings_options
def shipping(settings: Settings, metrics_port: int | None, metrics_host: str) -> None:
    """The shipping service (shipping-service-group on payment-events); the same as
    ``outbox worker services.shipping:consumer``."""
    _run_consumer("shipping", settings, metrics_port, metrics_host)


@main.command("order-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=8000, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None,
              help="larger request bodies are refused with 413  [default: 65536]")
@METRICS_PORT
@METRICS_HOST
@settings_options
def order_api(settings: Settings, host: str, port: int, max_body_bytes: int | None,
              metrics_port: int | None, metrics_host: str) -> None:
    """The order service: HTTP API plus its consumer (order-service-group).

    ``/health`` is 200 only while the database answers and the consumer is healthy; if
    the consumer stops, the API stops too, with exit code 7.
    """
    import uvicorn

    from services.api_input import DEFAULT_MAX_BODY_BYTES
    from services.order import create_app

    _logging()
    _start_up(settings)
    sock = _listen(f"--host {host} --port {port}", lambda: _bind(host, port))
    engine = make_engine(settings)
    consumer = CONSUMERS["order"](settings, engine)
    if metrics_port is not None:
        _listen(f"--metrics-port {metrics_port}",
                lambda: consumer.serve_metrics(metrics_port, metrics_host))
    supervisor = Supervisor()
    app = create_app(for_service(settings, "orders"), engine,
                     max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
                     health=supervisor.check)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))

    def stop_serving() -> None:
        server.should_exit = True  # uvicorn drains requests and returns

    supervisor.on_death.append(stop_serving)
    # Our own handlers: uvicorn's re-raise the signal after shutdown (exit -15, not 0).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    supervisor.install_signal_handlers(also=stop_serving)
    supervisor.start("order-consumer", consumer.run, consumer.request_stop,
                     health=consumer.health)
    server.run(sockets=[sock])
    sys.exit(supervisor.stop())


@main.command()
@click.argument("order_id")
@settings_options
def retry(settings: Settings, order_id: str) -> None:
    """Re-send every event of ORDER_ID from all four outboxes, with their original ids.

    A step that never happened (a consumer was down past retention, a dead letter was
    dropped, a bug was fixed) runs now; steps that did happen are skipped by the
    consumers' inboxes. The saga moves on from wherever it was stuck.
    """
    total = 0
    for schema in SCHEMAS:
        result = replay(for_service(settings, schema), ReplayFilter(
            aggregate_ids=(order_id,), include_unpublished=False))
        if result.errors:
            raise click.ClickException(f"{schema}: {result.errors[0]}")
        total += result.delivered
    if total == 0:
        raise click.ClickException(f"no published event of order {order_id!r} in any outbox")
    click.echo(f"re-sent {total} event(s) of order {order_id}; consumers skip what they "
               "already applied")


if __name__ == "__main__":
    main()
