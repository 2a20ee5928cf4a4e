"""Where the local stack is, and what to do when it is not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("OUTBOX_STACK_DIR", ROOT / ".stack"))
ENV_FILE = STACK_DIR / "env"


def load_stack_env() -> dict[str, str]:
    """Read ``.stack/env`` (written by ``make stack-up``) into ``os.environ``.

    Variables already set in the environment win, so a developer can point the tests at
    other servers.
    """
    values: dict[str, str] = {}
    if ENV_FILE.exists():
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key and not key.startswith("#"):
                values[key.strip()] = value.strip()
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in values}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, detail: str) -> None:
    """Fail in CI, skip on a developer machine: a missing service is never a silent pass."""
    message = f"{what} is not reachable ({detail}); start the local stack with `make stack-up`"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)
