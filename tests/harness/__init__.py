"""Test harness: stack settings, per-test databases, unique topics, Kafka helpers."""
