"""Debezium-compatible Kafka Connect configuration: render, validate, apply, status."""
