"""``outbox replay``: re-publish chosen outbox rows to Kafka with their original event ids.

The seed's ``retry-failed-order`` endpoint re-ran a step over HTTP. Here a step is re-run by
sending its events again: same ids, same key, value and headers (``outbox.record``), so
consumers that already applied an event skip it (their inbox holds its id) and consumers
that missed it apply it now.

Replay produces directly (idempotent producer, ``acks=all``) instead of flagging rows for
the relay, so it works the same whether the relay or Debezium delivers the outbox, and it
never disturbs the relay's bookkeeping. Rows are sent in ``seq`` order, which per
aggregate is commit order. Rows already purged by retention cannot be replayed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
from confluent_kafka import KafkaError, Message
from psycopg import sql

from outbox import preflight
from outbox.cli_options import CliError, confirm, settings_options
from outbox.cloudevents import record_headers
from outbox.exit_codes import EXIT_ERROR
from outbox.kafka import ordered_producer
from outbox.record import StoredRow, invalid_topic_reason, stored_record
from outbox.settings import Settings
from relay.queries import RECORD_COLUMNS, Queries

SELECT_ROWS = """
select """ + RECORD_COLUMNS + """
  from {table} as o
 where ({published_only} = false or {delivered})
   and (%(ids)s::uuid[] is null or id = any(%(ids)s))
   and (%(aggregate_type)s::text is null or aggregatetype = %(aggregate_type)s)
   and (%(aggregate_ids)s::text[] is null or aggregateid = any(%(aggregate_ids)s))
   and (%(event_type)s::text is null or type = %(event_type)s)
   and (%(since)s::timestamp is null or created_at >= %(since)s)
   and (%(until)s::timestamp is null or created_at < %(until)s)
 order by seq
"""


@dataclass(frozen=True)
class ReplayFilter:
    """Which outbox rows to replay. Empty fields do not filter."""

    event_ids: tuple[uuid.UUID, ...] = ()
    aggregate_type: str | None = None
    aggregate_ids: tuple[str, ...] = ()
    event_type: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    include_unpublished: bool = False

    def is_empty(self) -> bool:
        """True when no filter narrows the selection (replaying everything)."""
        return not (self.event_ids or self.aggregate_type or self.aggregate_ids
                    or self.event_type or self.since or self.until)

    def params(self) -> dict[str, Any]:
        """Query parameters for :data:`SELECT_ROWS`."""
        return {
            "ids": list(self.event_ids) or None,
            "aggregate_type": self.aggregate_type,
            "aggregate_ids": list(self.aggregate_ids) or None,
            "event_type": self.event_type,
            "since": _naive_utc(self.since),
            "until": _naive_utc(self.until),
        }


@dataclass
class ReplayResult:
    """What a replay did."""

    selected: int = 0
    delivered: int = 0
    errors: list[str] = field(default_factory=list)


def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    # created_at is a UTC timestamp without time zone; compare like with like.
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _query(settings: Settings, flt: ReplayFilter, count: bool) -> sql.Composed:
    table = sql.Identifier(settings.db_schema, settings.outbox_table)
    query = sql.SQL(SELECT_ROWS).format(
        table=table, published_only=sql.Literal(not flt.include_unpublished),
        # Built from identifiers checked by Settings (Queries.for_settings).
        delivered=sql.SQL(Queries.for_settings(settings).delivered("o")))
    if count:
        return sql.SQL("select count(*) from ({}) as chosen").format(query)
    return query


def count_rows(settings: Settings, flt: ReplayFilter) -> int:
    """How many outbox rows ``flt`` selects."""
    with psycopg.connect(settings.libpq_url()) as conn:
        row = conn.execute(_query(settings, flt, count=True), flt.params()).fetchone()
    return int(row[0]) if row else 0


def iter_rows(settings: Settings, flt: ReplayFilter, batch: int = 1000) -> Iterator[StoredRow]:
    """The selected rows in ``seq`` order, streamed with a server-side cursor."""
    with psycopg.connect(settings.libpq_url()) as conn, conn.transaction(), \
            conn.cursor(name="outbox_replay") as cur:
        cur.itersize = batch
        cur.execute(_query(settings, flt, count=False), flt.params())
        for row in cur:
            yield StoredRow(*row)


def replay(settings: Settings, flt: ReplayFilter, on_progress: Any = None,
           flush_timeout: float = 60.0) -> ReplayResult:
    """Produce the selected rows again; returns counts and delivery errors.

    ``on_progress(n)`` is called with the number of records acknowledged since the last call.
    """
    result = ReplayResult()
    producer = ordered_producer(settings, {"linger.ms": 5})

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            result.errors.append(f"{msg.topic()}: {err.str()}")
            return
        result.delivered += 1
        if on_progress is not None:
            on_progress(1)

    headers_of = record_headers(settings)  # the relay's headers (ce_* in CloudEvents mode)
    for row in iter_rows(settings, flt):
        record = stored_record(row, settings.topic_template)
        result.selected += 1
        reason = invalid_topic_reason(record.topic)
        if reason is not None:
            result.errors.append(f"event {row.id}: {reason}")
            continue
        while True:
            try:
                producer.produce(record.topic, key=record.key, value=record.value,
                                 headers=list(headers_of(row)), timestamp=record.timestamp_ms,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain
        producer.poll(0)
    left = producer.flush(flush_timeout)
    if left:
        result.errors.append(f"{left} record(s) not acknowledged within {flush_timeout:.0f}s")
    return result


def _parse_time(value: str | None, flag: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time (e.g. 2026-11-25T10:00)",
                                 param_hint=flag) from None


@click.command("replay")
@click.option("--event-id", "event_ids", multiple=True, type=click.UUID,
              help="replay this event (repeatable)")
@click.option("--aggregate-type", help="only rows of this aggregate type (e.g. order)")
@click.option("--aggregate-id", "aggregate_ids", multiple=True,
              help="only rows of this aggregate (repeatable)")
@click.option("--event-type", help="only rows of this event type (e.g. OrderCreated)")
@click.option("--since", help="only rows created at or after this UTC time (ISO-8601)")
@click.option("--until", help="only rows created before this UTC time (ISO-8601)")
@click.option("--all", "replay_all", is_flag=True,
              help="replay every row (required when no other filter is given)")
@click.option("--include-unpublished", is_flag=True,
              help="also rows the relay has not delivered yet or gave up on")
@click.option("--dry-run", is_flag=True, help="show what would be sent, send nothing")
@click.option("--yes", "-y", is_flag=True, help="do not ask before a large replay")
@click.option("--confirm-over", default=100, show_default=True,
              help="ask for confirmation when more rows than this are selected")
@settings_options
def replay_command(settings: Settings, event_ids: tuple[uuid.UUID, ...],
                   aggregate_type: str | None, aggregate_ids: tuple[str, ...],
                   event_type: str | None, since: str | None, until: str | None,
                   replay_all: bool, include_unpublished: bool, dry_run: bool, yes: bool,
                   confirm_over: int) -> None:
    """Re-publish chosen outbox rows with their original event ids (consumers dedupe them)."""
    flt = ReplayFilter(event_ids, aggregate_type, aggregate_ids, event_type,
                       _parse_time(since, "--since"), _parse_time(until, "--until"),
                       include_unpublished)
    if flt.is_empty() and not replay_all:
        raise click.UsageError("no filter given: name events (--event-id, --aggregate-type, "
                               "--aggregate-id, --event-type, --since/--until) or pass --all")
    total = count_rows(settings, flt)
    if dry_run:
        click.echo(f"dry run: {total} row(s) would be re-published")
        for n, row in enumerate(iter_rows(settings, flt)):
            if n == 50:
                click.echo(f"... and {total - 50} more")
                break
            record = stored_record(row, settings.topic_template)
            created = dt.datetime.fromtimestamp(row.created_ms / 1000, dt.UTC)
            click.echo(f"{row.id}  {record.topic:<24} key={row.aggregateid:<24} {row.type}  "
                       f"{created.replace(tzinfo=None).isoformat(timespec='seconds')}")
        return
    if total == 0:
        click.echo("nothing to replay: no outbox row matches")
        return
    if total > confirm_over:
        confirm(f"re-publish {total} events?", yes)
    preflight.check_kafka(settings)  # an unreachable broker: one line now, not at the end
    with click.progressbar(length=total, label="re-publishing", show_pos=True) as bar:
        result = replay(settings, flt, on_progress=bar.update)
    click.echo(f"re-published {result.delivered} of {result.selected} event(s)")
    if result.delivered < result.selected:
        for line in result.errors[:20]:
            click.echo(f"error: {line}", err=True)
        raise CliError(f"{result.selected - result.delivered} of {result.selected} event(s) "
                       "were not re-published; running the same replay again is safe "
                       "(consumers dedupe by event id)", EXIT_ERROR)


__all__ = ["ReplayFilter", "ReplayResult", "count_rows", "iter_rows", "replay", "replay_command"]
