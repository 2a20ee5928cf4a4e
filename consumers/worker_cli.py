"""``outbox worker MODULE:APP``: run a consumer application, no hand-written ``main``.

    outbox worker services.inventory:consumer --metrics-port 9101 --instance-id inv-0

``APP`` is a :class:`~consumers.Consumer`, or a callable that takes the
:class:`~outbox.settings.Settings` (from the flags and ``OUTBOX_*``) and returns one. The
worker gives it the toolkit's logging, signal handling (the first SIGTERM/SIGINT drains
and stops, a second exits at once with 130), ``/metrics`` and ``/health``, a static group
membership id (``--instance-id`` / ``OUTBOX_CONSUMER_INSTANCE_ID``) and the exit codes of
:mod:`outbox.exit_codes`: a bad ``MODULE:APP``, port or setting is one line and exit 3; a
database or broker that does not answer at start, 6; a fenced instance, 5.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from consumers.handlers import HandlerSignatureError
from consumers.runtime import Consumer
from outbox.cli_options import PORT, cannot_serve_metrics, settings_options
from outbox.errors import ConfigurationError
from outbox.exit_codes import EXIT_CONFIG, EXIT_ERROR
from outbox.settings import Settings

log = logging.getLogger("outbox.worker")


def load_app(path: str, settings: Settings) -> Consumer:
    """The consumer ``MODULE:ATTRIBUTE`` names (a factory is called with ``settings``);
    a one-line :class:`ConfigurationError` if it names none."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"worker app {path!r} is not MODULE:ATTRIBUTE (e.g. "
                                 "services.inventory:consumer)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module of the project the worker runs in
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
            raise  # the module is there, something it imports is not: its own bug
        raise ConfigurationError(f"worker app {path!r}: no module named {exc.name!r} "
                                 f"(run from the project's directory, or install it)"
                                 ) from None
    except HandlerSignatureError as exc:  # a handler registered at import time
        raise ConfigurationError(f"worker app {path!r}: {exc}") from None
    target = getattr(module, attribute, None)
    if target is None:
        raise ConfigurationError(f"worker app {path!r}: module {module_name!r} has no "
                                 f"attribute {attribute!r}")
    if isinstance(target, Consumer):
        return target
    if not callable(target):
        raise ConfigurationError(f"worker app {path!r} is {type(target).__name__}, not a "
                                 "Consumer or a function of Settings returning one")
    try:
        app = target(settings)
    except HandlerSignatureError as exc:  # a handler registered by the app's factory
        raise ConfigurationError(f"worker app {path!r}: {exc}") from None
    if not isinstance(app, Consumer):
        raise ConfigurationError(f"worker app {path!r} returned {type(app).__name__}, not "
                                 "a Consumer")
    return app


def run_worker(app: Consumer, metrics_port: int | None = None,
               metrics_host: str = "127.0.0.1", instance_id: str | None = None) -> int:
    """Run ``app`` in this process until a signal; returns its exit code."""
    if instance_id:
        app.options.instance_id = instance_id
    if metrics_port is not None:
        try:
            app.serve_metrics(metrics_port, metrics_host)
        except OSError as exc:
            log.error("%s", cannot_serve_metrics(metrics_host, metrics_port, exc),
                      extra={"action": "config_error"})
            return EXIT_CONFIG
    app.install_signal_handlers()
    try:
        return app.run()  # its start-up checks first: exit code 3 or 6
    except ConfigurationError as exc:
        log.error("%s", exc, extra={"action": "config_error", "group": app.group})
        return EXIT_CONFIG
    except Exception:
        log.exception("consumer %s crashed", app.group, extra={"action": "consumer_crashed"})
        return EXIT_ERROR


@click.command("worker")
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--metrics-port", type=PORT, default=None, envvar="OUTBOX_METRICS_PORT",
              help="serve Prometheus /metrics and /health on this port "
                   "[env OUTBOX_METRICS_PORT]")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="address of the /metrics and /health endpoint (0.0.0.0 in a container)")
@click.option("--instance-id", default=None, envvar="OUTBOX_CONSUMER_INSTANCE_ID",
              help="static group membership id, unique per running instance (e.g. the pod "
                   "name) [env OUTBOX_CONSUMER_INSTANCE_ID]")
@settings_options(daemon=True, log_format="json", log_level="info")
def worker(settings: Settings, app_path: str, metrics_port: int | None, metrics_host: str,
           instance_id: str | None) -> None:
    """Run the consumer application MODULE:APP (a Consumer, or a function of the settings
    returning one) with logging, signals, /health and /metrics, and exit codes."""
    try:
        app = load_app(app_path, settings)
    except ConfigurationError as exc:
        log.error("%s", exc, extra={"action": "config_error"})
        sys.exit(EXIT_CONFIG)
    sys.exit(run_worker(app, metrics_port, metrics_host, instance_id))
