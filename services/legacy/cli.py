"""Run the legacy chain's processes (the baseline of bench/migration.py).

    python -m services.legacy.cli serve create-order --port 9001 --mode fetch \\
        --call process-inventory=http://127.0.0.1:9002/functions/v1/process-inventory
    python -m services.legacy.cli serve process-inventory --port 9002 --call process-payment=...
    python -m services.legacy.cli serve create-order --mode kafka     # dual write
    python -m services.legacy.cli serve create-order --mode outbox    # the strangler's step 1
    python -m services.legacy.cli consume process-inventory           # dual-write consumer
    python -m services.legacy.cli saga inventory                      # the outbox saga's own
                                                                      # service, fault hooks on

``setup`` is the saga's (``outbox-saga setup``): the same schemas and tables.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from decimal import Decimal
from types import FrameType

import click

from outbox.cli_options import PORT, settings_options
from outbox.logs import configure_logging
from outbox.settings import Settings
from services import events as ev
from services.gateway import SimulatedGateway
from services.legacy import faults, steps
from services.legacy.delivery import FireAndForget, ProduceAfterCommit
from services.runtime import CONSUMERS, for_service, make_engine, topic
from services.tables import ORDERS_SCHEMA

GATEWAY = [click.option("--decline-rate", default=0.0, show_default=True,
                        help="share of authorisations the simulated gateway declines"),
           click.option("--latency", default=0.0, show_default=True,
                        help="seconds the simulated gateway takes per authorisation")]


def gateway_options(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(GATEWAY):
        func = option(func)
    return func


def _gateway(decline_rate: float, latency: float) -> SimulatedGateway:
    return SimulatedGateway(decline_rate=decline_rate, latency_seconds=latency,
                            limit=Decimal("10000"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The seed's fetch() chain, its dual-write variant, and fault-armed saga services."""
    configure_logging("json", "info")


@main.command()
@click.argument("functions", nargs=-1, required=True,
                type=click.Choice(list(steps.FUNCTIONS)))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, required=True)
@click.option("--mode", type=click.Choice(["fetch", "kafka", "outbox"]), default="fetch",
              show_default=True, help="how a step tells the next one after its commit")
@click.option("--call", "calls", multiple=True, metavar="STEP=URL",
              help="where a step is served (fetch mode), repeatable")
@gateway_options
@settings_options
def serve(settings: Settings, functions: tuple[str, ...], host: str, port: int, mode: str,
          calls: tuple[str, ...], decline_rate: float, latency: float) -> None:
    """Serve FUNCTIONS on POST /functions/v1/<function>."""
    import uvicorn

    from services.legacy.app import create_app

    urls = dict(call.split("=", 1) for call in calls)
    deliver = (FireAndForget(urls) if mode == "fetch"
               else ProduceAfterCommit(settings) if mode == "kafka" else None)
    app = create_app(list(functions), make_engine(settings, pool_size=10), deliver,
                     _gateway(decline_rate, latency),
                     for_service(settings, ORDERS_SCHEMA) if mode == "outbox" else None)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           backlog=2048))

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()


@main.command()
@click.argument("step", type=click.Choice([steps.INVENTORY_STEP, steps.PAYMENT_STEP,
                                           steps.SHIPPING_STEP]))
@gateway_options
@settings_options
def consume(settings: Settings, step: str, decline_rate: float, latency: float) -> None:
    """The dual-write variant: run STEP for each event that triggers it."""
    from services.legacy.dualwrite import StepConsumer

    gateway = _gateway(decline_rate, latency)
    run = {steps.INVENTORY_STEP: steps.process_inventory,
           steps.PAYMENT_STEP: lambda s, o, c: steps.process_payment(s, gateway, o, c),
           steps.SHIPPING_STEP: steps.process_shipping}[step]
    consumer = StepConsumer(settings, step, run, make_engine(settings),
                            ProduceAfterCommit(settings))

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        consumer.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(consumer.run())


# The event whose handling is one saga step, per service (what the fault hook counts).
TRIGGER = {"inventory": (ev.ORDER, ev.ORDER_CREATED),
           "payment": (ev.INVENTORY, ev.INVENTORY_RESERVED),
           "shipping": (ev.PAYMENT, ev.PAYMENT_AUTHORIZED)}


@main.command()
@click.argument("service", type=click.Choice(sorted(TRIGGER)))
@gateway_options
@settings_options
def saga(settings: Settings, service: str, decline_rate: float, latency: float) -> None:
    """The outbox saga's SERVICE (as `outbox-saga SERVICE`), with the fault hook counting
    its steps (OUTBOX_FAULT_KILL_AFTER)."""
    extra = {"gateway": _gateway(decline_rate, latency)} if service == "payment" else {}
    consumer = CONSUMERS[service](settings, make_engine(settings), **extra)
    aggregate, event_type = TRIGGER[service]
    trigger = (topic(settings, aggregate), event_type)
    consumer.handlers[trigger] = faults.counting(consumer.handlers[trigger])
    consumer.install_signal_handlers()
    sys.exit(consumer.run())


if __name__ == "__main__":
    main()
