"""The ``outbox`` command line.

Each area owns its commands in its own module; this group only knows where they live and
imports a module when its command runs, so ``outbox --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from outbox import __version__

# command name -> "module:attribute" of the click command (its docstring is its help)
COMMANDS: dict[str, str] = {
    "db": "outbox.db_cli:db",
    "relay": "relay.cli:relay",
    "status": "relay.cli:status",
    "purge": "relay.cli:purge",
    "replay": "relay.replay:replay_command",
    "dlq": "consumers.cli:dlq",
    "inbox": "consumers.cli:inbox",
    "connect": "connect.cli:connect",
    "capture": "outbox.capture_cli:capture",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox")
def main() -> None:
    """Transactional outbox toolkit: migrations, relay, replay, dead letters, Kafka Connect."""
