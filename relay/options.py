"""How a relay runs: the options of ``outbox relay run`` (relay.cli), one field each."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass
class RelayOptions:
    """How the relay runs; every field but ``instance_id`` and ``siblings`` (set for each process
    of ``--processes``) has a CLI flag on ``outbox relay run``."""

    batch_size: int = 2000
    poll_interval: float = 1.0
    listen: bool = True
    pipeline_depth: int = 2
    max_attempts: int = 5
    rebalance_interval: float = 2.0
    stats_interval: float = 5.0
    shutdown_timeout: float = 30.0
    # None: keep delivered rows (purge them with `outbox purge`); otherwise the daemon
    # purges rows delivered and older than this every purge_interval (0: as soon as they
    # are delivered, keeping nothing to replay).
    retention_seconds: float | None = None
    # seconds between writes of delivery progress (relay.window): what a crash re-sends
    progress_interval: float = 0.2
    purge_interval: float = 60.0
    purge_batch: int = 1000
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Not a flag: the relay processes one `--processes` supervisor starts together, this
    # one included. Each takes at most its share of that many from the start; counting
    # only the live sessions, the first to connect took every shard and relayed alone
    # until the next rebalance (2 s: most of a 100,000-event backlog).
    siblings: int = 1
