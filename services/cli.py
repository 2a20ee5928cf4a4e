"""The ``outbox-saga`` command line: runs one service of the order saga per process."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the order saga's services (order API, inventory, payment, shipping)."""
