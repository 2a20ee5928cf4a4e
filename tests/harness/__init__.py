"""Test harness: stack settings, per-test databases, unique topics, Kafka helpers, Debezium
connectors, the relay and a consumer in a thread."""
