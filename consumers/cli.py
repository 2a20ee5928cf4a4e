"""``outbox dlq`` (list, redrive) and ``outbox inbox purge``."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass

import click
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, Message, TopicPartition
from sqlalchemy import create_engine

from consumers.dlq import DLQ_SUFFIX, dlq_topic, strip_diagnostics
from consumers.inbox import InboxStore
from consumers.message import headers_of
from outbox import preflight
from outbox.cli_options import DURATION, CliError, confirm, format_duration, settings_options
from outbox.exit_codes import EXIT_CONFIG, EXIT_ERROR, EXIT_UNAVAILABLE
from outbox.kafka import client_config, ordered_producer
from outbox.settings import Settings

# dead letters listed before "... and N more" when redrive shows what it will send
SHOW = 50


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
    """Every record of dead-letter topic ``topic``, from the beginning to the end.

    The broker is asked first (:func:`outbox.preflight.check_kafka`), so an unreachable one
    is one line within ``timeout``; a topic not read to its end within ``timeout`` is an
    error, never a short list.
    """
    preflight.check_kafka(settings, timeout=timeout)
    consumer = KafkaConsumer(client_config(settings, {
        "group.id": f"outbox-dlq-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest"}))
    out: list[DeadLetter] = []
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise CliError(f"dead-letter topic {topic!r} does not exist (nothing was ever "
                           "dead-lettered there); check the topic name", EXIT_CONFIG)
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
        if ends:
            raise CliError(f"{topic}: read {len(out)} dead letters, but partitions "
                           f"{sorted(ends)} were not read to their end within {timeout:.0f}s; "
                           "is the broker overloaded? try again", EXIT_UNAVAILABLE)
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


def _origin_name(topic: str) -> str:
    return topic.removesuffix(DLQ_SUFFIX)


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
@click.option("--to", "target", default=None,
              help="send to this topic instead of TOPIC (the dead letters' own "
                   "dlq.original.topic header is never trusted)")
@click.option("--dry-run", is_flag=True, help="show what would be sent, send nothing")
@click.option("--yes", "-y", is_flag=True, help="do not ask before sending more than one")
@settings_options
def redrive(settings: Settings, topic: str, event_ids: tuple[str, ...], redrive_all: bool,
            target: str | None, dry_run: bool, yes: bool) -> None:
    """Publish dead letters of TOPIC back to TOPIC, with original key and headers.

    Only to TOPIC (or to --to): whoever can write TOPIC.dlq could otherwise name any topic
    in a header and have the operator write there. Shows what will be sent and asks before
    sending more than one (--yes for scripts). Safe to repeat: consumers dedupe by event id,
    so a redriven event that was meanwhile applied has no second effect.
    """
    if not event_ids and not redrive_all:
        raise click.UsageError("name events with --event-id, or pass --all")
    destination = target or _origin_name(topic)
    letters = read_dead_letters(settings, _dlq_name(topic))
    chosen = [d for d in letters if redrive_all or d.event_id in event_ids]
    missing = set(event_ids) - {d.event_id for d in chosen}
    if missing:
        raise CliError(f"not in {_dlq_name(topic)}: {', '.join(sorted(missing))}; see "
                       f"`outbox dlq list {topic}`", EXIT_CONFIG)
    cut = [d for d in chosen if d.header("dlq.truncated")]
    if cut and not redrive_all:
        raise CliError(f"{', '.join(d.event_id or '-' for d in cut)}: truncated dead "
                       "letter(s) (the original was too large or unreadable to keep whole) "
                       "cannot be redriven; the original is at the dlq.original.* topic, "
                       "partition and offset, or `outbox replay --event-id` sends it again "
                       "from the outbox", EXIT_ERROR)
    if cut:
        click.echo(f"skipping {len(cut)} truncated dead letter(s): they cannot be redriven "
                   "(see `outbox dlq list`)")
        chosen = [d for d in chosen if not d.header("dlq.truncated")]
    _show(chosen, destination)
    if dry_run:
        click.echo(f"dry run: {len(chosen)} dead letter(s) would be redriven to {destination}")
        return
    if not chosen:
        click.echo(f"{_dlq_name(topic)}: nothing to redrive")
        return
    if len(chosen) > 1:
        confirm(f"redrive {len(chosen)} dead letters to {destination}?", yes)
    sent = _send(settings, chosen, destination)
    click.echo(f"redriven {sent} dead letter(s) to {destination}")


def _show(letters: list[DeadLetter], destination: str) -> None:
    for d in letters[:SHOW]:
        named = d.header("dlq.original.topic")
        note = f"  (header names {named!r}: ignored)" if named and named != destination else ""
        key = (d.key or b"").decode("utf-8", "replace")[:40]
        click.echo(f"redrive {d.event_id or '-'} key={key} {d.header('dlq.reason')} -> "
                   f"{destination}{note}")
    if len(letters) > SHOW:
        click.echo(f"... and {len(letters) - SHOW} more")


def _send(settings: Settings, letters: list[DeadLetter], destination: str) -> int:
    """Produce ``letters`` to ``destination``; all acknowledged, or an error saying how
    many were not."""
    producer = ordered_producer(settings)
    errors: list[str] = []
    acked = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal acked
        if err is not None:
            errors.append(err.str())
        else:
            acked += 1

    for d in letters:
        while True:
            try:
                producer.produce(destination, key=d.key, value=d.value,
                                 headers=list(strip_diagnostics(d.headers)),
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(30)
    if acked < len(letters):
        why = errors[0] if errors else "not acknowledged within 30s"
        raise CliError(f"redrive incomplete: {len(letters) - acked} of {len(letters)} dead "
                       f"letter(s) not sent to {destination} ({why}); running it again is "
                       "safe (consumers dedupe)", EXIT_UNAVAILABLE)
    return acked


@click.group()
def inbox() -> None:
    """Consumer dedupe rows (the inbox table)."""


@inbox.command()
@click.option("--older-than", type=DURATION, required=True,
              help="e.g. 7d (a bare number is seconds); keep longer than Kafka retention")
@click.option("--group", help="only this consumer group")
@settings_options
def purge(settings: Settings, older_than: float, group: str | None) -> None:
    """Delete dedupe rows older than --older-than, in small transactions."""
    engine = create_engine(settings.sqlalchemy_url())
    try:
        deleted = InboxStore(settings).purge(engine, dt.timedelta(seconds=older_than), group)
    finally:
        engine.dispose()
    click.echo(f"purged {deleted} inbox row(s) older than {format_duration(older_than)}")
