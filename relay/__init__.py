"""The relay daemon: claim unpublished outbox rows, produce them to Kafka, mark them published."""
