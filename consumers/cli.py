"""``outbox dlq`` (list, redrive) and ``outbox inbox purge``."""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from dataclasses import dataclass

import click
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from sqlalchemy import create_engine

from consumers.dlq import DLQ_SUFFIX, dlq_topic, strip_diagnostics
from consumers.inbox import InboxStore
from consumers.message import headers_of
from outbox.cli_options import settings_options
from outbox.settings import Settings


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        return value.decode("utf-8", "replace") if value is not None else ""

    @property
    def event_id(self) -> str:
        return self.header("id")


def read_dead_letters(settings: Settings, topic: str, timeout: float = 10.0) -> list[DeadLetter]:
    """Every record of dead-letter topic ``topic``, from the beginning to the end."""
    consumer = KafkaConsumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers, **settings.kafka_config,
        "group.id": f"outbox-dlq-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    out: list[DeadLetter] = []
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise click.ClickException(f"dead-letter topic {topic!r} does not exist (nothing "
                                       "was ever dead-lettered there)")
        ends: dict[int, int] = {}
        for partition in info.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                       timeout=timeout)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            out.append(_dead_letter(msg))
            if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                ends.pop(msg.partition() or 0, None)
    finally:
        consumer.close()
    return sorted(out, key=lambda d: (d.partition, d.offset))


def _dead_letter(msg: Message) -> DeadLetter:
    key, value = msg.key(), msg.value()
    return DeadLetter(msg.partition() or 0, msg.offset() or 0,
                      key.encode() if isinstance(key, str) else key,
                      value.encode() if isinstance(value, str) else value, headers_of(msg))


def _dlq_name(topic: str) -> str:
    return topic if topic.endswith(DLQ_SUFFIX) else dlq_topic(topic)


@click.group()
def dlq() -> None:
    """Dead-letter topics ({topic}.dlq): see why messages failed, send them back."""


@dlq.command("list")
@click.argument("topic")
@settings_options
def list_command(settings: Settings, topic: str) -> None:
    """Show the dead letters of TOPIC (or of TOPIC.dlq): reason, attempts, origin."""
    letters = read_dead_letters(settings, _dlq_name(topic))
    if not letters:
        click.echo(f"{_dlq_name(topic)}: empty")
        return
    click.echo(f"{'event id':<36}  {'reason':<18} {'tries':>5}  {'origin':<28} error")
    for d in letters:
        origin = (f"{d.header('dlq.original.topic')}[{d.header('dlq.original.partition')}]"
                  f"@{d.header('dlq.original.offset')}")
        error = f"{d.header('dlq.exception.class')}: {d.header('dlq.exception.message')}"
        click.echo(f"{d.event_id or '-':<36}  {d.header('dlq.reason'):<18} "
                   f"{d.header('dlq.attempts'):>5}  {origin:<28} {error[:100]}")
    click.echo(f"{len(letters)} dead letter(s) in {_dlq_name(topic)}")


@dlq.command()
@click.argument("topic")
@click.option("--event-id", "event_ids", multiple=True, help="redrive this event (repeatable)")
@click.option("--all", "redrive_all", is_flag=True, help="redrive every dead letter")
@click.option("--dry-run", is_flag=True, help="show what would be sent, send nothing")
@settings_options
def redrive(settings: Settings, topic: str, event_ids: tuple[str, ...], redrive_all: bool,
            dry_run: bool) -> None:
    """Publish dead letters back to their original topic, with original key and headers.

    Safe to repeat: consumers dedupe by event id, so a redriven event that was meanwhile
    applied has no second effect.
    """
    if not event_ids and not redrive_all:
        raise click.UsageError("name events with --event-id, or pass --all")
    letters = read_dead_letters(settings, _dlq_name(topic))
    chosen = [d for d in letters if redrive_all or d.event_id in event_ids]
    missing = set(event_ids) - {d.event_id for d in chosen}
    if missing:
        raise click.ClickException(f"not in {_dlq_name(topic)}: {', '.join(sorted(missing))}")
    if dry_run:
        for d in chosen:
            click.echo(f"would redrive {d.event_id or '-'} to {d.header('dlq.original.topic')}")
        click.echo(f"dry run: {len(chosen)} dead letter(s) would be redriven")
        return
    producer = Producer({**settings.producer_config(), "enable.idempotence": True,
                         "acks": "all", "partitioner": "murmur2_random"})
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.str())

    for d in chosen:
        original = d.header("dlq.original.topic") or re.sub(r"\.dlq$", "", _dlq_name(topic))
        producer.produce(original, key=d.key, value=d.value,
                         headers=list(strip_diagnostics(d.headers)), on_delivery=on_delivery)
        producer.poll(0)
    left = producer.flush(30)
    if left or errors:
        raise click.ClickException(f"redrive incomplete: {left} unacknowledged, errors: "
                                   f"{errors[:3]}")
    click.echo(f"redriven {len(chosen)} dead letter(s)")


def parse_age(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``12h``, ``7d`` → a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 15m, 12h or 7d")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return dt.timedelta(seconds=float(match.group(1)) * unit)


@click.group()
def inbox() -> None:
    """Consumer dedupe rows (the inbox table)."""


@inbox.command()
@click.option("--older-than", required=True, help="e.g. 7d; keep longer than Kafka retention")
@click.option("--group", help="only this consumer group")
@settings_options
def purge(settings: Settings, older_than: str, group: str | None) -> None:
    """Delete dedupe rows older than --older-than, in small transactions."""
    age = parse_age(older_than)
    engine = create_engine(settings.sqlalchemy_url())
    try:
        deleted = InboxStore(settings).purge(engine, age, group)
    finally:
        engine.dispose()
    click.echo(f"purged {deleted} inbox row(s) older than {older_than}")
