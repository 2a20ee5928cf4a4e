"""Transactional outbox for PostgreSQL and Kafka.

A service writes its business rows and an event row into the ``outbox`` table in one
transaction; the relay (or Debezium CDC) publishes the rows to Kafka; consumers apply
each event once in effect by recording its id in their own transaction.
"""

__version__ = "0.1.0"
