"""The ``outbox`` command line.

Each area registers its own click group here (``db``, ``relay``, ``dlq``, ``connect`` ...),
defined in the module that owns the concept.
"""

from __future__ import annotations

import click

from outbox import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="outbox")
def main() -> None:
    """Transactional outbox toolkit: migrations, relay, replay, dead letters, Kafka Connect."""
