"""The ``outbox`` command line.

Each area owns its commands in its own module; this group only knows where they live and
imports a module when its command runs, so ``outbox --help`` stays fast.

Every error ends the same way: ONE line on stderr, ``Error: what is wrong; what to do``,
and an exit code from :mod:`outbox.exit_codes` (docs/operations.md lists them). Usage
errors too (click would print three lines of usage around them).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from outbox import __version__
from outbox.exit_codes import EXIT_INTERRUPTED

# command name -> "module:attribute" of the click command (its docstring is its help)
COMMANDS: dict[str, str] = {
    "db": "outbox.db_cli:db",
    "relay": "relay.cli:relay",
    "status": "relay.cli:status",
    "purge": "relay.cli:purge",
    "replay": "relay.replay:replay_command",
    "dlq": "consumers.cli:dlq",
    "inbox": "consumers.cli:inbox",
    "worker": "consumers.worker_cli:worker",
    "events": "consumers.events_cli:events",
    "forward": "consumers.forward_cli:forward",
    "connect": "connect.cli:connect",
    "capture": "outbox.capture_cli:capture",
}


# command name -> its short help (click's: the first sentence of its docstring), so that
# ``outbox --help`` imports no command's module (all of them took 1.3 s, alembic and
# SQLAlchemy ~0.4 s of it); tests/test_cli_errors.py keeps them equal to the commands'.
SUMMARIES: dict[str, str] = {
    "capture": "Trigger capture: publish an event for each row a legacy writer changes.",
    "connect": "Debezium's PostgreSQL connector with the outbox router: render, validate, "
               "apply ...",
    "db": "Migrations: add the outbox and inbox tables to an existing database.",
    "dlq": "Dead-letter topics ({topic}.dlq): see why messages failed, send them back.",
    "events": "The event types each topic carries for consumer applications, with JSON "
              "Schemas (`outbox events APP`), or as an AsyncAPI 3.0 document (`outbox "
              "events asyncapi APP`).",
    "forward": "Deliver events to existing HTTP endpoints (a consumer with inbox and dead "
               "letters).",
    "inbox": "Consumer dedupe rows (the inbox table).",
    "purge": "Delete published outbox rows older than the retention, in small batches.",
    "relay": "The relay daemon that publishes outbox rows to Kafka.",
    "replay": "Re-publish chosen outbox rows with their original event ids (consumers "
              "dedupe them).",
    "status": "Backlog, oldest unpublished age, failed rows, shard owners.",
    "worker": "Run the consumer application MODULE:APP (a Consumer, or a function of the "
              "settings returning one) with logging, signals, /health and /metrics, and "
              "exit codes.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``outbox --help`` as click writes it, from SUMMARIES: no
        command's module is imported."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # (a stand-in command shortens each summary exactly as click shortens a help text)
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=SUMMARIES[name])
                                 .get_short_help_str(limit)) for name in names])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Run the command line; in standalone mode every error is one line and an exit
        code (a bug's traceback only with ``OUTBOX_TRACEBACK=1``)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message())  # a group without a command: its help
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error_line(exc.format_message() + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _error_line(exc.format_message())
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
            _error_line("interrupted")
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            from outbox.cli_options import cli_error, traceback_wanted

            if traceback_wanted():
                raise
            error = cli_error(exc)
            _error_line(error.format_message())
            sys.exit(error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _error_line(message: str) -> None:
    """``Error: message`` on stderr, folded onto one line."""
    click.echo("Error: " + " ".join(message.split()), err=True)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox")
def main() -> None:
    """Transactional outbox toolkit: migrations, relay, replay, dead letters, Kafka Connect."""
