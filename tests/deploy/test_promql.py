"""The PromQL name extraction the kit's checks rely on (pure logic)."""

from __future__ import annotations

from tests.deploy.promql import metric_names


def test_metric_names_skip_functions_labels_keywords_and_strings() -> None:
    expr = ('histogram_quantile(0.99, sum by (outbox, le) (rate(outbox_relay_commit_to_ack_'
            'seconds_bucket{outbox=~"$outbox"}[5m]))) > 2 * 1024 or on (group) '
            'outbox:consumer_up:sum == bool 0 and max without (instance) (up{job="x"})')
    assert metric_names(expr) == {"outbox_relay_commit_to_ack_seconds_bucket",
                                  "outbox:consumer_up:sum", "up"}
    assert metric_names('time() - (outbox_consumer_last_poll_timestamp_seconds > 0)') == {
        "outbox_consumer_last_poll_timestamp_seconds"}
    assert metric_names("(x unless x offset 10m) >= increase(x[1h]) > 1e3") == {"x"}
