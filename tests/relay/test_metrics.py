"""The relay's hot-path histogram (pure logic)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from relay.background import STATS_DUTY, stats_wait
from relay.metrics import HotHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-200, 4000), max_size=50))
def test_observe_ages_counts_like_one_observe_per_value(ages_ms: list[int]) -> None:
    # Exactly on a bucket bound, float rounding may put the value on either side.
    assume(not {round(b * 1000) for b in BUCKETS} & set(ages_ms))
    now = 1_800_000_000.0
    created = [int(now * 1000) - age for age in ages_ms]
    one = HotHistogram("a", "a", BUCKETS, CollectorRegistry())
    batch = HotHistogram("b", "b", BUCKETS, CollectorRegistry())
    for ms in created:
        one.observe(max(0.0, now - ms / 1000.0))
    batch.observe_ages(now, created)
    assert batch.counts == one.counts
    assert abs(batch.sum - one.sum) < 1e-3 or any(a < 0 for a in ages_ms)


def test_the_backlog_count_waits_its_interval_or_longer_when_counting_is_slow() -> None:
    assert stats_wait(5.0, 0.0) == 5.0
    assert stats_wait(5.0, 0.2) == 5.0  # a quick count: the interval
    # 10 million rows counted in ~9 s: counting takes 5 % of the time
    assert stats_wait(5.0, 9.0) == pytest.approx(171.0)


@given(st.floats(0.1, 60), st.floats(0, 600))
def test_counting_never_takes_more_than_its_share_of_the_time(interval: float,
                                                               took: float) -> None:
    wait = stats_wait(interval, took)
    assert wait >= interval
    assert took <= STATS_DUTY * (took + wait) * (1 + 1e-9)
