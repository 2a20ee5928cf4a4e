"""Relay benchmark: throughput against the raw producer ceiling, and commit->ack latency.

    .venv/bin/python bench/relay.py                 # 200,000 events, the documented run
    .venv/bin/python bench/relay.py --events 20000  # a quick look

1. Throughput: N events (~300-byte payloads, 1,000 aggregates) are committed first; the
   relay then publishes them (events/s from first claim to last ack). In the same run the
   raw confluent-kafka producer, with the same configuration, sends the same records from
   memory: the ceiling. Reported: both rates and their ratio (target >= 0.5). Then the
   relay's database work alone (read the same rows and record progress, no Kafka): a
   bound on what the relay can reach on this machine, and its ratio to raw.
2. Latency: a separate writer process commits one event per transaction with ``publish()``
   at a steady rate (default 1,000/s); for each event, the time from its commit returning
   to the relay's delivery report (ack) is measured. Reported: p50/p99/max (target p99 <= 25 ms).

``--mode cdc`` is the hook for the Debezium path (same writer and measurements, Kafka
Connect instead of the relay); it is not implemented here yet.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy import MetaData, create_engine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE  # noqa: E402
from outbox.publish import Event, publish  # noqa: E402
from outbox.record import StoredRow, stored_record  # noqa: E402
from outbox.settings import load_settings  # noqa: E402
from outbox.tables import outbox_table, relay_cursor_table  # noqa: E402
from relay.loop import Batch, Relay, RelayOptions  # noqa: E402
from relay.producer import producer_config  # noqa: E402
from relay.queries import RECORD_COLUMNS, Queries, prefer_index_scans, read_backlog  # noqa: E402
from relay.window import ShardCursor, open_window, progress, read_params  # noqa: E402
from services.launcher import load_stack_env  # noqa: E402

# Set from the command line: extra producer properties and the relay's pipeline depth.
EXTRA_KAFKA: dict[str, str] = {}
TUNING: dict[str, Any] = {"pipeline_depth": RelayOptions.pipeline_depth}


def with_db(url: str, name: str) -> str:
    """The same postgresql:// URL with another database name."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def create_database(url: str) -> str:
    name = f"bench_relay_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(with_db(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    db_url = with_db(url, name)
    engine = create_engine("postgresql+psycopg://" + db_url[len("postgresql://"):])
    metadata = MetaData()
    outbox_table(metadata)
    relay_cursor_table(metadata)
    metadata.create_all(engine)
    engine.dispose()
    return db_url


def drop_database(url: str, db_url: str) -> None:
    name = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(with_db(url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(
            sql.Identifier(str(name))))


def payload(n: int, aggregate: str, size: int) -> dict[str, Any]:
    body = {"eventType": "OrderUpdated", "eventId": str(uuid.uuid4()), "orderId": aggregate,
            "correlationId": aggregate, "occurredAt": "2026-01-01T00:00:00Z", "n": n}
    pad = size - len(json.dumps(body, separators=(",", ":"))) - 10
    body["note"] = "x" * max(0, pad)
    return body


INSERT = ("insert into outbox (id, aggregatetype, aggregateid, type, payload, correlation_id) "
          "values (%s, 'bench', %s, 'OrderUpdated', %s, %s)")


def write_backlog(db_url: str, events: int, aggregates: int, size: int) -> float:
    started = time.perf_counter()
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        chunk = 5000
        for base in range(0, events, chunk):
            rows = []
            for n in range(base, min(events, base + chunk)):
                agg = f"order-{n % aggregates}"
                rows.append((uuid.uuid4(), agg, Jsonb(payload(n, agg, size)), agg))
            cur.executemany(INSERT, rows)
            conn.commit()
    return time.perf_counter() - started


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None and md.partitions:
            return
        time.sleep(0.2)


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Remove a run's topics: hundreds of leftover partitions slow the dev broker down."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        try:
            future.result()
        except Exception as exc:  # clean-up only: say so and go on
            print(f"could not delete a bench topic: {exc}", file=sys.stderr)


def run_relay_until(relay: Relay, done: Callable[[], bool], timeout: float) -> int:
    """Run the relay in this thread (so a profiler sees it) until ``done()``."""
    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        relay.request_stop()

    threading.Thread(target=watch, daemon=True).start()
    return relay.run()


def bench_relay(db_url: str, bootstrap: str, prefix: str, events: int, batch: int,
                profile: str | None) -> dict[str, float]:
    settings = load_settings(database_url=db_url, kafka_bootstrap_servers=bootstrap,
                             topic_template=prefix + "-{aggregatetype}",
                             kafka_config=EXTRA_KAFKA)
    relay = Relay(settings, RelayOptions(batch_size=batch, listen=False, poll_interval=0.2,
                                         stats_interval=3600,
                                         pipeline_depth=TUNING["pipeline_depth"]))
    profiler: Any = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
    run_relay_until(relay, lambda: relay.published_total >= events, timeout=900)
    if profiler is not None and profile is not None:
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=True, show_all=False)
                                 if profile.endswith(".txt") else profiler.output_html())
    assert relay.first_claim_at is not None and relay.last_ack_at is not None
    elapsed = relay.last_ack_at - relay.first_claim_at
    return {"events": relay.published_total, "seconds": elapsed,
            "rate": relay.published_total / elapsed}


def reset_cursors(db_url: str) -> None:
    """Every row pending again: the relay's cursors are its only record of delivery."""
    queries = Queries.for_settings(load_settings(database_url=db_url))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"delete from {queries.cursor_table}")


def bench_raw(db_url: str, bootstrap: str, topic_prefix: str) -> dict[str, float]:
    """The same records, built from the same rows beforehand, sent by a bare producer."""
    settings = load_settings(database_url=db_url, kafka_bootstrap_servers=bootstrap,
                             topic_template=topic_prefix + "-{aggregatetype}",
                             kafka_config=EXTRA_KAFKA)
    queries = Queries.for_settings(settings)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(f"select {RECORD_COLUMNS} from {queries.qualified} as o "
                            "order by seq").fetchall()
    records = [stored_record(StoredRow(*r), settings.topic_template) for r in rows]
    producer = Producer(producer_config(settings.producer_config(), "bench-raw"))
    errors = [0]

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors[0] += 1

    started = time.perf_counter()
    for rec in records:
        while True:
            try:
                producer.produce(rec.topic, rec.value, rec.key, headers=cast(Any, rec.headers),
                                 timestamp=rec.timestamp_ms, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    elapsed = time.perf_counter() - started
    if left or errors[0]:
        raise RuntimeError(f"raw producer: {left} undelivered, {errors[0]} errors")
    return {"events": len(records), "seconds": elapsed, "rate": len(records) / elapsed}


def bench_db_floor(db_url: str, batch: int) -> dict[str, float]:
    """The relay's database work alone on the same rows: read, record progress, no Kafka.

    The relay cursors are deleted (every row is pending again) and the table vacuumed;
    then the rows are read as the relay reads them (relay.window: the first batch of a
    window, then a server-side cursor over the rest, all 256 shards in one group) and the
    progress of each batch written with the relay's own statement. No relay can beat this
    rate on the same machine, whatever Kafka does: it bounds the achievable ratio.
    """
    queries = Queries.for_settings(load_settings(database_url=db_url))
    reset_cursors(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"vacuum analyze {queries.qualified}")
    shards = list(range(256))
    cursors = {s: ShardCursor() for s in shards}
    total = 0
    with psycopg.connect(db_url, autocommit=True) as conn, psycopg.connect(db_url) as reader:
        for c in (conn, reader):
            prefer_index_scans(c)  # as the relay's sessions
        started = time.perf_counter()
        params: dict[str, Any] = read_params(shards, cursors, None)
        params["limit"] = batch + 1
        found = conn.execute(queries.first_window_batch, params).fetchall()
        window = open_window(shards, cursors, found[0][-1])
        rows = [r[:-1] for r in found[:batch]]
        declared = False
        while rows:
            total += len(rows)
            done = len(found) <= batch if not declared else len(rows) < batch
            shards_read = {int(r[10]) for r in rows}
            window.touched |= shards_read
            changed = progress(cursors, window, shards_read, int(rows[-1][9]), done)
            keys = sorted(changed)
            conn.execute(queries.save_cursors, {
                "shards": keys, "done": [changed[k].done for k in keys],
                "win": [changed[k].win for k in keys], "upto": [changed[k].upto for k in keys]})
            cursors.update(changed)
            if done:
                break
            if not declared:
                reader.execute(queries.declare_window("w"), read_params(
                    shards, cursors, window.wins, after=int(rows[-1][9])))
                declared = True
            rows = reader.execute(f"fetch forward {batch} from w").fetchall()
        reader.commit()
        elapsed = time.perf_counter() - started
    return {"events": total, "seconds": elapsed, "rate": total / elapsed}


def bench_relay_processes(db_url: str, bootstrap: str, prefix: str, events: int,
                          aggregates: int, size: int, batch: int, instances: int
                          ) -> dict[str, float]:
    """``instances`` relay processes (``outbox relay run``) sharing the shards.

    The backlog is written in one transaction that commits only once the relays own all
    256 shards between them; the clock runs from that commit to the last row recorded as
    delivered (longer than to the last ack by up to the relays' progress interval).
    """
    env = {**os.environ, "OUTBOX_DATABASE_URL": db_url,
           "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": prefix + "-{aggregatetype}",
           "OUTBOX_KAFKA_CONFIG": json.dumps(EXTRA_KAFKA)}
    cmd = [str(ROOT / ".venv" / "bin" / "outbox"), "relay", "run", "--no-listen",
           "--poll-interval", "0.05", "--batch-size", str(batch),
           "--pipeline-depth", str(TUNING["pipeline_depth"]), "--log-level", "warning"]
    writer = psycopg.connect(db_url)
    with writer.cursor() as cur:
        for base in range(0, events, 5000):
            rows = []
            for n in range(base, min(events, base + 5000)):
                agg = f"order-{n % aggregates}"
                rows.append((uuid.uuid4(), agg, Jsonb(payload(n, agg, size)), agg))
            cur.executemany(INSERT, rows)
    procs = [subprocess.Popen(cmd, env=env) for _ in range(instances)]
    try:
        share = -(-256 // instances)
        with psycopg.connect(db_url, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                counts = [int(r[0]) for r in watch.execute(
                    "select count(*) from pg_locks where locktype = 'advisory' and "
                    "objsubid = 2 and classid = %s and database = (select oid from "
                    "pg_database where datname = current_database()) group by pid",
                    (RELAY_SHARD_LOCK_NAMESPACE,)).fetchall()]
                if len(counts) == instances and sum(counts) == 256 and max(counts) <= share:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"relays did not share the shards: {counts}")
            started = time.perf_counter()
            writer.commit()
            # The relays' pending count (index ranges of the undelivered rows only), not a
            # scan of the whole table: polled while the relays run, it competes for CPU.
            queries = Queries.for_settings(load_settings(database_url=db_url))
            watch.execute("set enable_seqscan = off")
            while True:
                if read_backlog(watch, queries)[0] == 0:
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
    finally:
        writer.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    return {"events": events, "instances": instances, "seconds": elapsed,
            "rate": events / elapsed}


def steady_writer(db_url: str, rate: float, seconds: float, aggregates: int, size: int,
                  out: Any, writer: str = "publish") -> None:
    """Commit one event per transaction at ``rate``/s; send {id: commit time} back."""
    commits: dict[str, float] = {}
    interval = 1.0 / rate
    with psycopg.connect(db_url, autocommit=False) as conn:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            due = start + n * interval
            if now < due:
                time.sleep(due - now)
            agg = f"order-{n % aggregates}"
            if writer == "publish":
                # A service's own path: publish() in its transaction (aggregate lock + insert).
                event = Event(aggregate_type="bench", aggregate_id=agg,
                              event_type="OrderUpdated", payload=payload(n, agg, size),
                              correlation_id=agg)
                publish(conn, event)
                event_id = event.id
            else:
                event_id = uuid.uuid4()
                conn.execute(INSERT, (event_id, agg, Jsonb(payload(n, agg, size)), agg))
            conn.commit()
            commits[str(event_id)] = time.time()
            n += 1
    out.put(commits)


class TimedRelay(Relay):
    """The relay, noting when each row was handed to the producer (latency breakdown)."""

    produced_at: dict[str, float]
    claim_seconds: list[float]

    def _claim_and_produce(self, group: int) -> None:
        started = time.perf_counter()
        super()._claim_and_produce(group)
        self.claim_seconds.append(time.perf_counter() - started)

    def _produce(self, batch: Batch) -> None:
        now = time.time()
        for row in batch.rows:
            self.produced_at[row[0]] = now
        super()._produce(batch)


def bench_latency(db_url: str, bootstrap: str, prefix: str, rate: float, seconds: float,
                  aggregates: int, size: int, batch: int, writer: str,
                  dump: str | None = None) -> dict[str, float]:
    settings = load_settings(database_url=db_url, kafka_bootstrap_servers=bootstrap,
                             topic_template=prefix + "-{aggregatetype}",
                             kafka_config=EXTRA_KAFKA)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(Queries.for_settings(settings).notify_trigger)
    acks: dict[str, float] = {}

    def on_ack(event_id: str, at: float) -> None:
        acks[event_id] = at

    relay = TimedRelay(settings, RelayOptions(batch_size=batch, listen=True, poll_interval=1.0,
                                              stats_interval=3600,
                                              pipeline_depth=TUNING["pipeline_depth"]),
                       on_ack=on_ack)
    relay.produced_at, relay.claim_seconds = {}, []
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(relay.run()), daemon=True)
    thread.start()
    time.sleep(2)  # shards acquired, producer connected
    queue: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(
        target=steady_writer, args=(db_url, rate, seconds, aggregates, size, queue, writer))
    proc.start()
    commits: dict[str, float] = queue.get(timeout=seconds + 120)
    proc.join(30)
    deadline = time.monotonic() + 30
    while len(acks) < len(commits) and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.request_stop()
    thread.join(60)
    latencies = sorted((acks[i] - t) * 1000 for i, t in commits.items() if i in acks)
    if len(latencies) < len(commits):
        raise RuntimeError(f"{len(commits) - len(latencies)} events were not acknowledged")

    # Where the time goes: commit -> handed to the producer (wake-up, waiting for the shard
    # group, claim) and produce -> Kafka's acknowledgement.
    waiting = sorted((relay.produced_at[i] - t) * 1000 for i, t in commits.items())
    in_kafka = sorted((acks[i] - relay.produced_at[i]) * 1000 for i in commits)

    if dump:
        # One line per event: seconds since the first commit, commit->ack,
        # commit->produce and produce->ack in ms (where in the run the tail sits).
        first = min(commits.values())
        with open(dump, "w") as f:
            for i, t in sorted(commits.items(), key=lambda item: item[1]):
                f.write(f"{t - first:.4f} {(acks[i] - t) * 1000:.3f} "
                        f"{(relay.produced_at[i] - t) * 1000:.3f} "
                        f"{(acks[i] - relay.produced_at[i]) * 1000:.3f}\n")

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))]

    return {"events": len(latencies), "achieved_rate": len(commits) / seconds,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "max_ms": latencies[-1], "mean_ms": statistics.fmean(latencies),
            "commit_to_produce_p50_ms": pct(waiting, 50),
            "commit_to_produce_p99_ms": pct(waiting, 99),
            "produce_to_ack_p50_ms": pct(in_kafka, 50),
            "produce_to_ack_p99_ms": pct(in_kafka, 99),
            "claims": len(relay.claim_seconds),
            "claim_and_produce_p50_ms": pct(sorted(relay.claim_seconds), 50) * 1000,
            "claim_and_produce_p99_ms": pct(sorted(relay.claim_seconds), 99) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--aggregates", type=int, default=1000)
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--pipeline-depth", type=int, default=RelayOptions.pipeline_depth)
    parser.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra producer property for relay and raw producer alike")
    parser.add_argument("--instances", type=int, default=0,
                        help="also measure this many relay processes sharing the shards "
                             "(0: skip)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase events/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--writer", choices=["publish", "insert"], default="publish",
                        help="latency phase: write with publish() or a plain INSERT")
    parser.add_argument("--latency-dump", metavar="FILE",
                        help="latency phase: one line per event (s since start, commit->ack, "
                             "commit->produce, produce->ack in ms)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput: rounds of raw then relay on the same rows; the "
                             "median ratio is reported")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--profile", metavar="HTML", help="pyinstrument profile of the relay")
    parser.add_argument("--mode", choices=["relay", "cdc"], default="relay",
                        help="cdc: relay and Debezium side by side (runs bench/cdc.py)")
    parser.add_argument("--cdc", action="store_const", const="cdc", dest="mode",
                        help="same as --mode cdc")
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args(argv)
    EXTRA_KAFKA.update(kv.split("=", 1) for kv in args.kafka_config)
    TUNING["pipeline_depth"] = args.pipeline_depth
    if args.mode == "cdc":
        # Same workload through the relay and through Debezium in one run: bench/cdc.py.
        from bench import cdc

        sys.argv = [sys.argv[0], "--events", str(args.events)]
        return cdc.main()
    load_stack_env()
    url = os.environ["OUTBOX_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    bootstrap = os.environ["OUTBOX_KAFKA_BOOTSTRAP_SERVERS"]
    report: dict[str, Any] = {"events": args.events, "pipeline_depth": TUNING["pipeline_depth"],
                              "kafka_config": EXTRA_KAFKA, "writer": args.writer,
                              "aggregates": args.aggregates,
                              "payload_bytes": args.payload_bytes,
                              "partitions": args.partitions, "batch_size": args.batch_size}
    if not args.skip_throughput:
        db_url = create_database(url)
        try:
            tag = uuid.uuid4().hex[:6]
            relay_prefix, raw_prefix = f"bench-relay-{tag}", f"bench-raw-{tag}"
            create_topic(bootstrap, f"{relay_prefix}-bench", args.partitions)
            create_topic(bootstrap, f"{raw_prefix}-bench", args.partitions)
            report["write_seconds"] = write_backlog(db_url, args.events, args.aggregates,
                                                    args.payload_bytes)
            print(f"backlog of {args.events} written in {report['write_seconds']:.1f}s",
                  file=sys.stderr)
            # Rounds of raw then relay on the same rows (the relay cursors are reset
            # between rounds: nothing else changes in the table). Both rates swing by
            # +-15 % from run to run on a shared host; the median of paired rounds is the
            # reported ratio, every round is listed.
            rounds = []
            for n in range(args.rounds):
                raw = bench_raw(db_url, bootstrap, raw_prefix)
                if n:
                    reset_cursors(db_url)
                relay = bench_relay(db_url, bootstrap, relay_prefix, args.events,
                                    args.batch_size, args.profile if n == 0 else None)
                rounds.append({"raw": raw["rate"], "relay": relay["rate"],
                               "ratio": relay["rate"] / raw["rate"]})
                print(f"round {n + 1}: raw {raw['rate']:.0f} events/s, relay "
                      f"{relay['rate']:.0f} events/s, ratio {rounds[-1]['ratio']:.2f}",
                      file=sys.stderr)
            report["rounds"] = rounds
            report["raw"] = {"rate": statistics.median(r["raw"] for r in rounds)}
            report["relay"] = {"rate": statistics.median(r["relay"] for r in rounds)}
            report["ratio"] = statistics.median(r["ratio"] for r in rounds)
            print(f"median ratio relay/raw: {report['ratio']:.2f}", file=sys.stderr)
            report["db_floor"] = bench_db_floor(db_url, args.batch_size)
            report["ratio_db_floor"] = report["db_floor"]["rate"] / report["raw"]["rate"]
            print(f"database work alone (read + record progress, no Kafka): "
                  f"{report['db_floor']['rate']:.0f} events/s", file=sys.stderr)
        finally:
            delete_topics(bootstrap, [f"{relay_prefix}-bench", f"{raw_prefix}-bench"])
            if not args.keep_db:
                drop_database(url, db_url)
        if args.instances > 0:
            db_url = create_database(url)
            try:
                multi_prefix = f"bench-multi-{uuid.uuid4().hex[:6]}"
                create_topic(bootstrap, f"{multi_prefix}-bench", args.partitions)
                multi = bench_relay_processes(
                    db_url, bootstrap, multi_prefix, args.events, args.aggregates,
                    args.payload_bytes, args.batch_size, args.instances)
                report["relay_processes"] = multi
                report["ratio_processes"] = multi["rate"] / report["raw"]["rate"]
                print(f"relay x{args.instances} processes: {multi['rate']:.0f} events/s",
                      file=sys.stderr)
            finally:
                if not args.keep_db:
                    drop_database(url, db_url)
    if not args.skip_latency:
        db_url = create_database(url)
        try:
            prefix = f"bench-lat-{uuid.uuid4().hex[:6]}"
            create_topic(bootstrap, f"{prefix}-bench", args.partitions)
            report["latency"] = bench_latency(db_url, bootstrap, prefix, args.rate,
                                              args.latency_seconds, args.aggregates,
                                              args.payload_bytes, args.batch_size,
                                              args.writer, args.latency_dump)
        finally:
            delete_topics(bootstrap, [f"{prefix}-bench"])
            if not args.keep_db:
                drop_database(url, db_url)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
