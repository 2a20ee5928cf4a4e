"""The ``outbox-saga`` command line: one service of the order saga per process.

    outbox-saga setup                 # schemas, outboxes, inboxes, tables, demo stock
    outbox-saga relay                 # one relay for the four outboxes
    outbox-saga order-api --port 8000 # HTTP API + the order service's consumer
    outbox-saga inventory | payment | shipping
    outbox-saga retry ORDER_ID        # re-send a stuck order's events (consumers dedupe)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from decimal import Decimal
from types import FrameType

import click

from outbox.cli_options import settings_options
from outbox.settings import Settings
from relay.replay import ReplayFilter, replay
from services.gateway import SimulatedGateway
from services.runtime import CONSUMERS, RelayGroup, for_service, make_engine, prepare_database
from services.tables import SCHEMAS


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def _wait_for_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the order saga's services (order API, inventory, payment, shipping) and relay."""


@main.command()
@settings_options
def setup(settings: Settings) -> None:
    """Create each service's schema, outbox, inbox and tables; stock the warehouse."""
    prepare_database(settings)
    click.echo(f"saga schemas ready: {', '.join(SCHEMAS)}")


@main.command("relay")
@settings_options
def relay_command(settings: Settings) -> None:
    """One relay for all four service outboxes (SIGTERM drains and stops)."""
    _logging()
    group = RelayGroup(settings)
    group.start()
    _wait_for_signal()
    group.stop()


METRICS_PORT = click.option("--metrics-port", type=int, default=None,
                            help="serve Prometheus metrics on this port")


def _run_consumer(name: str, settings: Settings, metrics_port: int | None,
                  **kw: object) -> None:
    _logging()
    consumer = CONSUMERS[name](settings, make_engine(settings), **kw)
    if metrics_port is not None:
        consumer.serve_metrics(metrics_port)
    consumer.install_signal_handlers()
    sys.exit(consumer.run())


@main.command()
@METRICS_PORT
@settings_options
def inventory(settings: Settings, metrics_port: int | None) -> None:
    """The inventory service (inventory-service-group on order-events, payment-events)."""
    _run_consumer("inventory", settings, metrics_port)


@main.command()
@click.option("--decline-rate", default=0.0, show_default=True,
              help="share of authorisations the simulated gateway declines")
@click.option("--latency", default=0.0, show_default=True,
              help="seconds the simulated gateway takes per authorisation")
@METRICS_PORT
@settings_options
def payment(settings: Settings, decline_rate: float, latency: float,
            metrics_port: int | None) -> None:
    """The payment service (payment-service-group on inventory-events)."""
    _run_consumer("payment", settings, metrics_port, gateway=SimulatedGateway(
        decline_rate=decline_rate, latency_seconds=latency, limit=Decimal("10000")))


@main.command()
@METRICS_PORT
@settings_options
def shipping(settings: Settings, metrics_port: int | None) -> None:
    """The shipping service (shipping-service-group on payment-events)."""
    _run_consumer("shipping", settings, metrics_port)


@main.command("order-api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@METRICS_PORT
@settings_options
def order_api(settings: Settings, host: str, port: int, metrics_port: int | None) -> None:
    """The order service: HTTP API plus its consumer (order-service-group)."""
    import uvicorn

    from services.order import create_app

    _logging()
    engine = make_engine(settings)
    consumer = CONSUMERS["order"](settings, engine)
    if metrics_port is not None:
        consumer.serve_metrics(metrics_port)
    thread = threading.Thread(target=consumer.run, name="order-consumer", daemon=True)
    thread.start()
    app = create_app(for_service(settings, "orders"), engine)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True  # uvicorn drains requests and returns
        consumer.request_stop()

    # Our own handlers: uvicorn's re-raise the signal after shutdown (exit -15, not 0).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()
    consumer.request_stop()
    thread.join(30)


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
