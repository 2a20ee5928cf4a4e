"""Backoff with jitter: a pure function."""

from __future__ import annotations

from outbox.backoff import compute_backoff


def test_no_failure_no_wait() -> None:
    assert compute_backoff(0) == 0.0


def test_grows_exponentially_between_half_and_full_step() -> None:
    for attempt, step in [(1, 0.2), (2, 0.4), (3, 0.8), (5, 3.2)]:
        assert compute_backoff(attempt, rand=lambda: 0.0) == step / 2
        assert compute_backoff(attempt, rand=lambda: 1.0) == step


def test_is_capped_even_for_huge_attempt_counts() -> None:
    assert compute_backoff(10_000, cap=15, rand=lambda: 1.0) == 15
    assert compute_backoff(20, cap=15, rand=lambda: 0.0) == 7.5


def test_jitter_spreads_retries() -> None:
    values = {round(compute_backoff(4), 6) for _ in range(50)}
    assert len(values) > 10
    assert all(0.8 <= v <= 1.6 for v in values)
