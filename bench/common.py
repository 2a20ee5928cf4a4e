"""What every benchmark shares: its own names, spread of rounds, alternation, payloads, clocks.

The rules these helpers exist for (docs/benchmarks.md, "How the benchmarks measure"):

- each run uses its own database and topic names (``RunNames``), so two runs on one
  stack cannot clobber each other;
- contenders run in rounds, in an order that rotates from round to round (``rotated``),
  after a warm-up round that is not counted; every round's figure is printed, and the
  median with its spread (``Spread``), not a pooled median alone;
- payloads are JSON objects of an exact size whose bulk is random (``payload``), so no
  codec or cache can make them cheaper than real data;
- a Kafka clock seen from outside the producer: topics are created with
  ``message.timestamp.type=LogAppendTime``, so the broker stamps each record batch when it
  appends it (with one replica, that is when the producer's ack leaves); the first and last
  stamps of a round's offsets (``append_span``) time any producer without a hook in it.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from confluent_kafka import (
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


# ----------------------------------------------------------------------------- stack
def stack_dir() -> Path:
    """The local stack's directory: ``$OUTBOX_STACK_DIR``, else the checkout's ``.stack``."""
    return Path(os.environ.get("OUTBOX_STACK_DIR", ROOT / ".stack"))


def load_env() -> None:
    """Read the stack's ``env`` file into ``os.environ`` (variables already set win)."""
    env = stack_dir() / "env"
    if env.exists():
        for line in env.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key and not key.startswith("#"):
                os.environ.setdefault(key.strip(), value.strip())
    for name in ("OUTBOX_DATABASE_URL", "OUTBOX_KAFKA_BOOTSTRAP_SERVERS"):
        if name not in os.environ:
            sys.exit(f"{name} is not set and {env} does not exist: start the stack "
                     "(make stack-up) or export OUTBOX_STACK_DIR")


def admin_url() -> str:
    """The stack's database URL in libpq form (the admin database new ones are made from)."""
    url = os.environ["OUTBOX_DATABASE_URL"]
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def bootstrap() -> str:
    return os.environ["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]


# ----------------------------------------------------------------------------- names
@dataclass(frozen=True)
class RunNames:
    """The names one run of one benchmark owns: ``bench_<kind>_<id>`` databases, topics
    and consumer groups under ``bench-<kind>-<id>``."""

    kind: str
    run_id: str

    @classmethod
    def new(cls, kind: str) -> RunNames:
        return cls(kind, uuid.uuid4().hex[:8])

    def database(self, part: str = "") -> str:
        return f"bench_{self.kind}_{self.run_id}" + (f"_{part}" if part else "")

    def topic(self, *parts: object) -> str:
        return "-".join(["bench", self.kind, self.run_id, *(str(p) for p in parts)])

    def group(self, *parts: object) -> str:
        return self.topic("group", *parts)


def with_database(url: str, name: str) -> str:
    """``url`` with another database name."""
    return url.rsplit("/", 1)[0] + "/" + name


def create_database(admin: str, name: str) -> str:
    """Create database ``name`` (it must not exist: names are the run's own); its URL."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return with_database(admin, name)


def drop_database(admin: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(name)))


# ----------------------------------------------------------------------------- rounds
def rotated(items: Sequence[T], round_no: int) -> list[T]:
    """``items`` starting at position ``round_no``: over rounds, each goes first in turn."""
    k = round_no % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


@dataclass(frozen=True)
class Spread:
    """Per-round figures of one measure: median, extremes and the spread between them."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    @property
    def relative(self) -> float:
        """(max - min) / median: how far apart the rounds are."""
        return (self.high - self.low) / self.median if self.values and self.median else 0.0

    def show(self, fmt: str = ",.0f") -> str:
        """``median (min-max, spread %; rounds a / b / c)``."""
        rounds = " / ".join(format(v, fmt) for v in self.values)
        return (f"{self.median:{fmt}} (range {self.low:{fmt}}-{self.high:{fmt}}, "
                f"spread {self.relative:.0%}; rounds {rounds})")

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high,
                "spread": self.relative, "rounds": list(self.values)}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))]


# ----------------------------------------------------------------------------- payloads
def payload(n: int, aggregate: str, size: int) -> dict[str, Any]:
    """A saga-like event body of exactly ``size`` bytes as compact JSON, bulk random.

    The fields an event of the saga carries, then a ``data`` string of base64 over random
    bytes filling it to ``size``: it cannot compress much (6 bits of entropy per
    character), unlike padding of one repeated character, which compresses to nothing and
    flatters every codec and buffer.
    """
    body: dict[str, Any] = {
        "eventType": "OrderUpdated", "eventId": str(uuid.uuid4()), "orderId": aggregate,
        "correlationId": aggregate, "occurredAt": "2026-11-27T10:00:00.000Z", "n": n,
        "data": ""}
    room = size - len(json.dumps(body, separators=(",", ":")))
    if room > 0:
        body["data"] = base64.b64encode(os.urandom(room * 3 // 4 + 3)).decode()[:room]
    return body


# ----------------------------------------------------------------------------- Kafka
def create_topic(servers: str, name: str, partitions: int,
                 config: dict[str, str] | None = None) -> None:
    """Create ``name`` with broker-stamped (LogAppendTime) timestamps, and wait for it."""
    admin = AdminClient({"bootstrap.servers": servers})
    conf = {"message.timestamp.type": "LogAppendTime", **(config or {})}
    admin.create_topics([NewTopic(name, partitions, 1, config=conf)])[name].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(name, timeout=5).topics.get(name)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise RuntimeError(f"topic {name} did not appear within 30 s")


def delete_topics(servers: str, names: list[str]) -> None:
    """Remove a run's topics: hundreds of leftover partitions slow the dev broker down."""
    admin = AdminClient({"bootstrap.servers": servers})
    existing = set(admin.list_topics(timeout=10).topics)
    names = [n for n in names if n in existing]  # e.g. dead-letter topics never used
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result()
        except Exception as exc:  # clean-up only: say so and go on
            print(f"could not delete bench topic {name}: {exc}", file=sys.stderr)


class Offsets:
    """High watermarks of topics, and the broker's append times of given offsets."""

    def __init__(self, servers: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": servers,
                                  "group.id": f"bench-offsets-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False})
        self.partitions: dict[str, int] = {}

    def close(self) -> None:
        self.consumer.close()

    def ends(self, topic: str) -> list[int]:
        """Each partition's high watermark (the offset the next record will get)."""
        if topic not in self.partitions:
            md = self.consumer.list_topics(topic, timeout=10).topics[topic]
            self.partitions[topic] = len(md.partitions)
        return [self.end(topic, p) for p in range(self.partitions[topic])]

    def end(self, topic: str, partition: int) -> int:
        """One partition's high watermark; retried while a new topic's leader settles."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return int(self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10, cached=False)[1])
            except KafkaException as exc:
                error = exc.args[0]
                settling = error.retriable() or error.code() in (
                    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
                if not settling or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait_total(self, topic: str, total: int, timeout: float,
                   alive: Any = None) -> list[int]:
        """Until the partitions hold ``total`` records; ``alive()`` false stops early."""
        deadline = time.monotonic() + timeout
        while True:
            ends = self.ends(topic)
            if sum(ends) >= total:
                return ends
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {sum(ends)} of {total} records after "
                                   f"{timeout:.0f} s")
            if alive is not None and not alive():
                raise RuntimeError(f"{topic}: the producer exited with {sum(ends)} of "
                                   f"{total} records in Kafka")
            time.sleep(0.1)  # the clock is the broker's stamp, not this poll

    def stamp(self, topic: str, partition: int, offset: int) -> float:
        """The broker's append time (epoch seconds) of one record."""
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = self.consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                kind, stamp = msg.timestamp()
                if kind != TIMESTAMP_LOG_APPEND_TIME:
                    raise RuntimeError(f"{topic} does not stamp records on append "
                                       "(create it with common.create_topic)")
                return float(stamp) / 1000
        raise TimeoutError(f"{topic}[{partition}]@{offset} could not be read")

    def append_span(self, topic: str, before: list[int], after: list[int]
                    ) -> tuple[float, float]:
        """(first, last) append time of the records between two sets of watermarks."""
        firsts, lasts = [], []
        for p, (b, a) in enumerate(zip(before, after, strict=True)):
            if a > b:
                firsts.append(self.stamp(topic, p, b))
                lasts.append(self.stamp(topic, p, a - 1))
        if not lasts:
            raise RuntimeError(f"{topic}: no records between {before} and {after}")
        return min(firsts), max(lasts)


def event_id(msg: Any) -> str | None:
    """The ``id`` header of a consumed message (the event id), if it has one."""
    for key, value in cast(list[tuple[str, Any]], msg.headers() or []):
        if key == "id" and isinstance(value, bytes):
            return value.decode()
    return None


def log_bytes(topic: str) -> int | None:
    """Bytes of the topic's log segments on the broker's disk (None: no local log dir).

    Read from the stack's broker data directory (``log.dirs`` of its server.properties):
    what the records take on disk after compression, batching and record overhead.
    """
    props = stack_dir() / "kafka" / "server.properties"
    if not props.exists():
        return None
    dirs = [line.split("=", 1)[1].strip() for line in props.read_text().splitlines()
            if line.startswith("log.dirs=")]
    total, found = 0, False
    for log_dir in (d for entry in dirs for d in entry.split(",")):
        for part in Path(log_dir).glob(f"{topic}-*"):
            if part.name.rsplit("-", 1)[0] != topic:
                continue
            found = True
            total += sum(f.stat().st_size for f in part.glob("*.log"))
    return total if found else None


def machine_load() -> str:
    """The 1-minute load average, for the report (these are shared development machines)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"
