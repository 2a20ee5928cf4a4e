"""The ``outbox`` command line.

Each area owns its commands in its own module; this group only knows where they live and
imports a module when its command runs, so ``outbox --help`` stays fast and one area's
missing optional dependency never breaks another's commands.
"""

from __future__ import annotations

import importlib

import click

from outbox import __version__

# command name -> ("module:attribute", one-line help shown by `outbox --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("outbox.db_cli:db", "Migrations: upgrade, downgrade, current, check."),
    "relay": ("relay.cli:relay", "Run the relay daemon that publishes outbox rows to Kafka."),
    "status": ("relay.cli:status", "Backlog, oldest unpublished age, failed rows, shard owners."),
    "purge": ("relay.cli:purge", "Delete published outbox rows older than the retention."),
    "replay": ("relay.replay:replay_command",
               "Re-publish chosen outbox rows with their original ids."),
    "dlq": ("consumers.cli:dlq", "Dead-letter topics: list and redrive."),
    "inbox": ("consumers.cli:inbox", "Consumer dedupe rows: purge old ones."),
    "connect": ("connect.cli:connect", "Debezium on Kafka Connect: render, validate, apply ..."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target[0].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return _unavailable(cmd_name, target[1])
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target[0]} is not a click command")
        return command


def _unavailable(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=f"{help_text} (not available in this build)",
                   context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"`outbox {name}` is not available in this build yet")

    return command


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox")
def main() -> None:
    """Transactional outbox toolkit: migrations, relay, replay, dead letters, Kafka Connect."""
