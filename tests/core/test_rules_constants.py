"""Constants of outbox.rules that are spelled out for start-up speed still hold."""

from __future__ import annotations

from outbox import rules


def test_whitespace_is_every_character_python_calls_whitespace() -> None:
    assert "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) == rules.WHITESPACE
