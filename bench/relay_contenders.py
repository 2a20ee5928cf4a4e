"""The contenders of bench/relay.py: the backlog, and each way of delivering it.

``native`` (bench/native/producer.c), ``raw`` (confluent-kafka from Python), ``relay``
(``outbox relay run`` as its own process) and ``floor`` (one ordered cursor over the rows):
each returns its rate and the seconds it was clocked for; bench/relay.py's docstring says
what each clock covers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import psycopg
from confluent_kafka import Producer
from psycopg.types.json import Jsonb

from bench import common, cpu, native
from bench.common import Offsets
from outbox.names import SHARD_COUNT
from outbox.record import StoredRow, stored_record_parts
from outbox.settings import Settings
from relay.producer import producer_config
from relay.queries import RECORD_COLUMNS, Queries

ROOT = Path(__file__).resolve().parents[1]

INSERT = ("insert into outbox (id, aggregatetype, aggregateid, type, payload, correlation_id) "
          "values (%s, 'bench', %s, 'OrderUpdated', %s, %s)")
Record = tuple[str, str | None, list[tuple[str, str]], int]


def outbox_command() -> list[str]:
    """``outbox`` as a user runs it: the console script next to this interpreter."""
    script = Path(sys.executable).parent / "outbox"
    return [str(script if script.exists() else ROOT / ".venv" / "bin" / "outbox")]


def write_backlog(url: str, events: int, aggregates: int, size: int,
                  conn: psycopg.Connection[Any] | None = None) -> float:
    """Insert ``events`` rows (committed unless ``conn``, an open transaction, is given)."""
    started = time.perf_counter()
    own = conn is None
    db = psycopg.connect(url) if conn is None else conn
    with db.cursor() as cur:
        for base in range(0, events, 5000):
            rows = []
            for n in range(base, min(events, base + 5000)):
                agg = f"order-{n % aggregates}"
                rows.append((uuid.uuid4(), agg, Jsonb(common.payload(n, agg, size)), agg))
            cur.executemany(INSERT, rows)
            if own:
                db.commit()
    if own:
        db.close()
    return time.perf_counter() - started


def read_records(url: str) -> list[Record]:
    """The relay's records of every row, in ``seq`` order, as the relay builds them."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"select {RECORD_COLUMNS} from outbox as o order by seq").fetchall()
    return [stored_record_parts(StoredRow(*r)) for r in rows]


def kafka_config(codec: str | None, extra: dict[str, str]) -> dict[str, str]:
    """Properties passed to every contender (the relay gets them as OUTBOX_KAFKA_CONFIG).

    ``codec`` is a ``compression.type``, optionally with a level: ``gzip:1``.
    """
    if not codec:
        return dict(extra)
    kind, _, level = codec.partition(":")
    return {**extra, "compression.type": kind, **({"compression.level": level} if level else {})}


# ----------------------------------------------------------------------------- contenders
def run_native(binary: Path, records: Path, topic: str, warm: str, config: dict[str, str],
               events: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        conf = Path(f.name)
    native.write_config(conf, producer_config(
        {"bootstrap.servers": common.bootstrap(), **config}, "bench-native"))
    try:
        report = native.produce(binary, records, conf, topic, warm)
    finally:
        conf.unlink()
    if report["delivered"] != events:
        raise RuntimeError(f"native producer delivered {report['delivered']} of {events}")
    seconds = report["last_ack"] - report["first_produce"]
    return {"rate": events / seconds, "seconds": seconds,
            "librdkafka": report["librdkafka"]}


def run_raw(records: list[Record], topic: str, warm: str, config: dict[str, str]
            ) -> dict[str, float]:
    producer = Producer(producer_config(
        {"bootstrap.servers": common.bootstrap(), **config}, "bench-raw"))
    # Warm: connected, the idempotent producer's id obtained (one record acknowledged on
    # another topic: without it the first records wait for the id), partitions known.
    producer.produce(warm, b"warm")
    if producer.flush(30):
        raise RuntimeError("raw producer: the warm-up record was not acknowledged in 30 s")
    producer.list_topics(topic, timeout=10)
    errors = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors[0] += 1

    started = time.time()
    for key, value, headers, ts in records:
        while True:
            try:
                producer.produce(topic, value, key, headers=cast(Any, headers), timestamp=ts,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    seconds = time.time() - started
    if left or errors[0]:
        raise RuntimeError(f"raw producer: {left} undelivered, {errors[0]} errors")
    return {"rate": len(records) / seconds, "seconds": seconds}


def run_relay(url: str, offsets: Offsets, topic_prefix: str, config: dict[str, str],
              events: int, args: argparse.Namespace, py_spy: list[str] | None = None,
              command: list[str] | None = None, cursor_done: str | None = None,
              processes: int | None = None, env: dict[str, str] | None = None
              ) -> dict[str, Any]:
    """``outbox relay run`` (or ``command``) on the backlog, clocked from its spawn to the
    last append. Before it, every shard's cursor is reset: deleted (every row pending
    again), or with ``cursor_done`` (a snapshot) set to it, as the relay leaves a shard
    after a complete window (rows committed before that snapshot stay delivered).
    ``processes``: ``--processes`` (None: the relay's default, one per CPU); ``env``: more
    environment for the relay."""
    cursors = Queries.for_settings(Settings(database_url=url)).cursor_table
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"delete from {cursors}")  # every row pending again
        if cursor_done is not None:
            conn.execute(f"insert into {cursors} (shard, done, win, upto) "
                         "select s, %s, null, 0 from generate_series(0, %s) as s",
                         (cursor_done, SHARD_COUNT - 1))
    topic = f"{topic_prefix}-bench"
    before = offsets.ends(topic)
    env = {**os.environ, **(env or {}), "OUTBOX_DATABASE_URL": url,
           "OUTBOX_TOPIC_TEMPLATE": topic_prefix + "-{aggregatetype}",
           "OUTBOX_KAFKA_CONFIG": json.dumps(config)}
    cmd = [*(command or outbox_command()), "relay", "run", "--batch-size", str(args.batch_size),
           "--pipeline-depth", str(args.pipeline_depth), "--log-level", "warning",
           "--log-format", "text", *(["--processes", str(processes)] if processes else [])]
    servers = cpu.Servers.of_stack()
    cpu_before = cpu.snapshot(servers, spawned=True)
    spawned = time.time()
    proc = subprocess.Popen(cmd, env=env)
    spy = None
    if py_spy:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                "--pid", str(proc.pid), "--format", "raw", "--threads",
                                "--rate", "200", *py_spy], stdout=subprocess.DEVNULL)
    try:
        after = offsets.wait_total(topic, sum(before) + events, timeout=900,
                                   alive=lambda: proc.poll() is None)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        if spy is not None:
            spy.wait(60)
    # CPU from the spawn to the relay's exit: not the broker's work for append_span below.
    used = cpu.since(servers, cpu_before, spawned=True)
    if code != 0:
        raise RuntimeError(f"the relay exited with {code}")
    first, last = offsets.append_span(topic, before, after)
    return {"rate": events / (last - spawned), "seconds": last - spawned,
            "steady_rate": events / max(last - first, 1e-3), "start_seconds": first - spawned,
            "cpu_us": used.per_event_us(events)}


def run_floor(url: str, batch: int) -> dict[str, Any]:
    """One ordered server-side cursor over the same rows: the database's read alone."""
    started = time.time()
    total = 0
    with psycopg.connect(url) as conn:
        plan = conn.execute(f"explain select {RECORD_COLUMNS} from outbox as o "
                            "order by seq").fetchone()
        with conn.cursor(name="floor") as cur:
            cur.execute(f"select {RECORD_COLUMNS} from outbox as o order by seq")
            while rows := cur.fetchmany(batch):
                total += len(rows)
    seconds = time.time() - started
    return {"rate": total / seconds, "seconds": seconds,
            "plan": str(plan[0]).split("  (")[0] if plan else "?"}
