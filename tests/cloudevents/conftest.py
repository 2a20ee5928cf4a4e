"""Fixtures of the CloudEvents tests: the relay's and the CDC tests' own."""

from __future__ import annotations

from tests.harness.connect import cdc
from tests.relay.conftest import outbox_url, prefix, start_relay

__all__ = ["cdc", "outbox_url", "prefix", "start_relay"]
