"""Advisory-lock namespaces: the first key of PostgreSQL's two-key advisory locks.

Kept in one place so that the toolkit's locks never collide with each other. An
application using two-key advisory locks should avoid these first keys.
"""

from __future__ import annotations

# publish(): transaction-scoped lock per aggregate, so per-aggregate seq order is commit order.
AGGREGATE_LOCK_NAMESPACE = 0x0B0C_0001
# relay: session-scoped lock per shard, held by the instance that owns the shard.
RELAY_SHARD_LOCK_NAMESPACE = 0x0B0C_0002
