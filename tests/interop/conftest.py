"""Fixtures for the interop tests: the KafkaJS reader and the TypeScript examples."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.node import node_project

ROOT = Path(__file__).resolve().parents[2]
JS = Path(__file__).resolve().parent / "js"
EXAMPLES = ROOT / "examples" / "typescript"


@dataclass(frozen=True)
class JsRecord:
    """A record as the KafkaJS consumer decoded it (text; None when absent)."""

    topic: str
    partition: int
    offset: str
    key: str | None
    value: str | None
    headers: dict[str, str | None]


def read_with_kafkajs(bootstrap: str, topic: str, count: int,
                      timeout_ms: int = 60_000) -> list[JsRecord]:
    """Run the KafkaJS reader (default settings, no codec plugins) until ``count`` records."""
    result = subprocess.run(["node", str(JS / "read.mjs"), bootstrap, topic, str(count),
                             str(timeout_ms)], capture_output=True, text=True,
                            timeout=timeout_ms / 1000 + 60)
    assert result.returncode == 0, (
        f"KafkaJS reader exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return [JsRecord(**json.loads(line)) for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="session")
def kafkajs() -> Path:
    """The KafkaJS reader, its package installed from the lock file."""
    return node_project(JS)


@pytest.fixture(scope="session")
def ts_examples() -> Path:
    """examples/typescript installed and compiled (tsc from its devDependencies)."""
    return node_project(EXAMPLES, build=True)
