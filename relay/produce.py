"""The relay's hot path: hand every row of a batch to librdkafka, and count the reports.

One record per row, in the exact format of docs/contracts.md (outbox.record): the topic
from the aggregate type, the aggregate id as key, the payload's compact JSON as value,
the pinned headers, ``created_at`` as timestamp. A row whose record Kafka would refuse
(topic name, size) is not produced; it fails here, and later rows of its aggregate in the
batch are not produced either (they must not overtake it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from outbox.cloudevents import record_headers
from outbox.record import (
    compact_json_many,
    invalid_topic_reason,
    topic_for,
)
from outbox.rules import record_too_large, relay_record_size
from outbox.settings import Settings
from relay.delivery import Batch, Failure, Stage
from relay.producer import is_permanent
from relay.rows import AGGREGATEID, AGGREGATETYPE, CREATED_MS, ID, PAYLOAD, SEQ, AggregateKey

Headers = list[tuple[str, str | bytes | None]]
# (event id, time.time() of its acknowledgement): benchmarks time each record with it
AckHook = Callable[[str, float], None]


class Sender:
    """Produces batches on a producer the loop owns; knows topics and the size rule."""

    def __init__(self, settings: Settings, flush_timeout: float,
                 on_ack: AckHook | None = None) -> None:
        self.template = settings.topic_template
        self.flush_timeout = flush_timeout
        self.on_ack = on_ack
        # outbox.rules: the record-size rule publish() applies, checked again here for rows
        # written another way; values shorter than this (4 bytes a character at most, plus
        # key and headers) cannot exceed the limit, so most rows skip the exact count.
        self.max_record_bytes = settings.max_record_bytes
        self.size_guard = (settings.max_record_bytes - 6000) // 4
        # a stored row's record headers (outbox.cloudevents: the ce_* ones added if enabled)
        self.headers_of = record_headers(settings)
        # aggregatetype -> (topic, why Kafka would refuse that name or None)
        self.topics: dict[str, tuple[str, str | None]] = {}

    def _topic(self, aggregatetype: str) -> tuple[str, str | None]:
        topic = topic_for(aggregatetype, self.template)
        found = self.topics[aggregatetype] = (topic, invalid_topic_reason(topic))
        return found

    def send(self, producer: Producer, batch: Batch, suspects: set[int]) -> None:
        """Produce every row of the batch; a row whose seq is in ``suspects`` goes alone in
        its produce request (flushed before and after), with a callback of its own."""
        produce = producer.produce
        stopped: set[AggregateKey] = set()
        topics = self.topics
        errors = batch.errors
        guard = self.size_guard
        headers_of = self.headers_of
        delivered = self._delivered
        # One callback for the batch, not one per record (a per-record functools.partial
        # cost ~1 µs per row of a ~5 µs loop); a failed report is traced back to its row
        # at settle (relay.delivery.attribute_failures). Rows retried alone keep an exact
        # callback.
        on_batch = functools.partial(self._batch_delivered if batch.partitions is None
                                     else self._traced_batch_delivered, batch)
        # The on_ack hook (benchmarks) needs each record's row: reports carry no headers.
        exact = self.on_ack
        careful = bool(suspects) or exact is not None
        # Payloads compacted for the whole batch at once (outbox.record.compact_json_many).
        values = iter(compact_json_many([row[PAYLOAD] for row in batch.rows
                                         if row[PAYLOAD] is not None]))
        # Counted here and added once: delivery reports only arrive in poll() and flush().
        sent = 0
        for index, row in enumerate(batch.rows):
            value = None if row[PAYLOAD] is None else next(values)
            key = row[AGGREGATEID]
            if stopped and (row[AGGREGATETYPE], key) in stopped:
                continue  # an earlier row of this aggregate already failed in this batch
            topic, reason = topics.get(row[AGGREGATETYPE]) or self._topic(row[AGGREGATETYPE])
            if reason is not None:
                errors[index] = Failure(Stage.TOPIC, True, reason)
                stopped.add((row[AGGREGATETYPE], key))
                continue
            headers = headers_of(row)  # type: ignore[arg-type]
            if value is not None and len(value) > guard:
                size = relay_record_size(key, value, headers)
                if size > self.max_record_bytes:
                    errors[index] = Failure(
                        Stage.SIZE, True,
                        "payload too large: it " + record_too_large(size, self.max_record_bytes))
                    stopped.add((row[AGGREGATETYPE], key))
                    continue
            callback = on_batch
            isolate = False
            if careful:
                isolate = row[SEQ] in suspects
                if exact is not None or isolate:
                    callback = functools.partial(delivered, batch, index)
                if isolate:
                    producer.flush(self.flush_timeout)  # nothing queued before it
                    batch.isolated.add(index)
            while True:
                try:
                    produce(topic, value, key, headers=headers,  # type: ignore[arg-type]
                            timestamp=row[CREATED_MS], on_delivery=callback)
                    sent += 1
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain it
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    errors[index] = Failure(Stage.PRODUCE, is_permanent(err),
                                            f"produce: {err.str()}")
                    stopped.add((row[AGGREGATETYPE], key))
                    break
            if isolate:
                producer.flush(self.flush_timeout)  # alone in its request
                if index in errors:
                    stopped.add((row[AGGREGATETYPE], key))  # known outcome: later rows wait
        batch.outstanding += sent

    @staticmethod
    def _batch_delivered(batch: Batch, err: KafkaError | None, msg: Message) -> None:
        # Kept small: it runs once per record. Latency is counted per batch at settle.
        batch.outstanding -= 1
        if err is not None:
            # Reports of failed records carry key and value, not headers: kept for
            # relay.delivery.attribute_failures.
            batch.failed_reports.append((msg.key(), msg.value(), is_permanent(err),
                                         f"delivery: {err.str()}"))
            batch.fatal = batch.fatal or err.fatal()

    @staticmethod
    def _note_partition(partitions: set[int], msg: Message) -> None:
        partition = msg.partition()
        if partition is not None:  # always set on a delivered record
            partitions.add(partition)

    @staticmethod
    def _traced_batch_delivered(batch: Batch, err: KafkaError | None, msg: Message) -> None:
        # A traced batch's callback: also the partition, for its send span.
        Sender._batch_delivered(batch, err, msg)
        if err is None and batch.partitions is not None:
            Sender._note_partition(batch.partitions, msg)

    def _delivered(self, batch: Batch, index: int, err: KafkaError | None,
                   msg: Message) -> None:
        """The exact callback of a row produced alone (or of every row with ``on_ack``)."""
        batch.outstanding -= 1
        if err is None and batch.partitions is not None:
            Sender._note_partition(batch.partitions, msg)
        if err is not None:
            batch.errors[index] = Failure(Stage.DELIVERY, is_permanent(err),
                                          f"delivery: {err.str()}")
            batch.fatal = batch.fatal or err.fatal()
        elif self.on_ack is not None:
            self.on_ack(batch.rows[index][ID], time.time())
