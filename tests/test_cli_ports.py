"""Every port option of every CLI (outbox, outbox-saga, the legacy chain's) takes 0..65535
and refuses anything else as a usage error, before anything starts: no bind() traceback."""

from __future__ import annotations

import socket
import subprocess

import click

from outbox.cli import main as outbox_main
from outbox.cli_options import PORT
from outbox.exit_codes import EXIT_CONFIG, EXIT_USAGE
from services.cli import main as saga_main
from services.legacy.cli import main as legacy_main
from tests.test_cli_errors import COMMAND


def commands(group: click.Group, path: tuple[str, ...]) -> list[tuple[tuple[str, ...],
                                                                       click.Command]]:
    ctx = click.Context(group)
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def port_options() -> dict[tuple[str, str], object]:
    """(command, option) -> its type, for every option whose name ends in "port"."""
    every = (commands(outbox_main, ("outbox",)) + commands(saga_main, ("outbox-saga",))
             + commands(legacy_main, ("legacy",)))
    return {(" ".join(path), option): param.type for path, command in every
            for param in command.params if isinstance(param, click.Option)
            for option in param.opts if option.endswith("port")}


def test_every_port_option_is_a_port() -> None:
    found = port_options()
    assert {key: kind for key, kind in found.items() if kind is not PORT} == {}
    # the ones known today, so that the walk is shown to reach them
    for expected in [("outbox relay run", "--metrics-port"), ("outbox worker", "--metrics-port"),
                     ("outbox forward run", "--metrics-port"),
                     ("outbox connect exporter", "--port"),
                     ("outbox-saga order-api", "--port"), ("legacy serve", "--port")]:
        assert expected in found, (expected, sorted(found))


def test_a_port_out_of_range_is_a_usage_error_of_one_line() -> None:
    for args in (["worker", "services.inventory:consumer", "--metrics-port", "-1"],
                 ["relay", "run", "--metrics-port", "70000"]):
        result = subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == EXIT_USAGE, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "is not in the range 0<=x<=65535" in lines[0], lines


def test_a_metrics_port_in_use_is_the_same_one_line_for_every_daemon() -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        for args in (["worker", "services.inventory:consumer"], ["relay", "run"]):
            result = subprocess.run([*COMMAND, *args, "--metrics-port", str(port)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == EXIT_CONFIG, result.stderr
            errors = [line for line in result.stderr.splitlines() if '"error"' in line]
            assert len(errors) == 1, result.stderr
            assert (f"cannot serve /metrics on 127.0.0.1:{port}: it is already in use; "
                    "choose another --metrics-port (or --metrics-host)") in errors[0]
    finally:
        busy.close()
