"""A consumer process for the deploy tests: tests.consumers.app's consumer, with /metrics.

    python -m tests.deploy.consumer_app DATABASE_URL BOOTSTRAP TOPIC GROUP METRICS_PORT
"""

from __future__ import annotations

import sys

from consumers import ConsumerOptions
from tests.consumers.app import build

if __name__ == "__main__":
    url, bootstrap, topic, group, port = sys.argv[1:6]
    consumer = build(url, bootstrap, topic, group, options=ConsumerOptions(
        poll_timeout=0.2, lag_interval=0.5, backoff_base=0.05, backoff_cap=0.2,
        kafka_config={"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}))
    consumer.serve_metrics(int(port))
    consumer.install_signal_handlers()
    sys.exit(consumer.run())
