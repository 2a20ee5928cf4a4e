"""Latency phase of bench/relay.py: commit -> ack of events written one per transaction.

A separate writer process commits one event per transaction with ``publish()`` (or a plain
INSERT) at a steady rate, with the NOTIFY trigger installed; the relay runs in this
process, so each event's delivery report is timed (``Relay(on_ack=...)``) and split into
commit -> handed to the producer and produce -> ack. The run is cut into
``--latency-windows`` windows by commit time, each reported on its own (its rounds), and
the same latencies are checked from outside: commit -> the broker's append stamp of the
record (LogAppendTime, whole milliseconds, so that column is +-1 ms).

The first ``--latency-warmup`` seconds of writing are a warm-up: every event of it must be
acknowledged too, but its latencies are printed on a line of their own and left out of
the figures (the producer's first record to a topic waits for the topic's metadata, and
the first windows of a new table are read from a cold cache: 50-80 ms once).

The floor, in the same run: the **dual write** the outbox replaces. A writer commits each
event the same way, then produces it itself with the relay's producer configuration and
waits for nothing else (``--latency-floor-seconds``, half before the relay's phase and half
after, on a database and topic of their own). Its commit -> ack is what Kafka and this
machine allow without a relay in between; unsafe (a crash between commit and produce
loses the event), and the relay's figures read against it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg.types.json import Jsonb

from bench import common
from bench.common import RunNames, Spread, percentile
from outbox import migrate
from outbox.kafka import producer_config
from outbox.publish import Event, publish
from outbox.settings import load_settings
from relay.loop import Batch, Relay, RelayOptions
from relay.queries import Queries
from relay.rows import ID

INSERT = ("insert into outbox (id, aggregatetype, aggregateid, type, payload, correlation_id) "
          "values (%s, 'bench', %s, 'OrderUpdated', %s, %s)")


def paced(rate: float, seconds: float, wait: Callable[[float], None]) -> Iterator[int]:
    """0, 1, 2 ... at ``rate`` a second for ``seconds``, each when it is due (``wait``
    sleeps, or serves delivery reports, until then); late ones follow at once."""
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - start < seconds:
        due = start + n * interval
        while now < due:
            wait(due - now)
            now = time.perf_counter()
        yield n
        n += 1


def steady_writer(url: str, rate: float, seconds: float, aggregates: int, size: int,
                  out: Any, writer: str) -> None:
    """Commit one event per transaction at ``rate``/s; send {id: commit time} back."""
    commits: dict[str, float] = {}
    with psycopg.connect(url, autocommit=False) as conn:
        for n in paced(rate, seconds, time.sleep):
            agg = f"order-{n % aggregates}"
            body = common.payload(n, agg, size)
            if writer == "publish":
                event = Event(aggregate_type="bench", aggregate_id=agg,
                              event_type="OrderUpdated", payload=body, correlation_id=agg)
                publish(conn, event)
                event_id = event.id
            else:
                event_id = uuid.uuid4()
                conn.execute(INSERT, (event_id, agg, Jsonb(body), agg))
            conn.commit()
            commits[str(event_id)] = time.time()
    out.put(commits)


def dual_writer(url: str, rate: float, seconds: float, aggregates: int, size: int, out: Any,
                config: dict[str, str], topic: str) -> None:
    """The floor: commit one event per transaction at ``rate``/s, then produce it from here
    (the dual write); send {id: (commit time, ack time)} back."""
    times: dict[str, tuple[float, float]] = {}
    commits: dict[str, float] = {}
    producer = Producer(config)

    def acked(event_id: str) -> Callable[[Any, Any], None]:
        def report(err: Any, _msg: Any) -> None:
            if err is None:
                times[event_id] = (commits[event_id], time.time())
        return report

    def serve(left: float) -> None:  # delivery reports while waiting
        producer.poll(left)

    with psycopg.connect(url, autocommit=False) as conn:
        for n in paced(rate, seconds, serve):
            agg = f"order-{n % aggregates}"
            body = common.payload(n, agg, size)
            event = Event(aggregate_type="bench", aggregate_id=agg, event_type="OrderUpdated",
                          payload=body, correlation_id=agg)
            publish(conn, event)
            conn.commit()
            event_id = str(event.id)
            commits[event_id] = time.time()
            producer.produce(topic, json.dumps(body, separators=(",", ":")).encode(),
                             key=agg.encode(), on_delivery=acked(event_id),
                             headers=[("id", event_id.encode()),
                                      ("eventType", b"OrderUpdated")])
            producer.poll(0)
    producer.flush(30)
    out.put(times)


def floor_phase(names: RunNames, part: str, args: argparse.Namespace, extra: dict[str, str],
                seconds: float) -> dict[str, tuple[float, float]]:
    """One dual-write phase (warm-up included) on a database and topic of its own."""
    admin = common.admin_url()
    url = common.create_database(admin, names.database(f"latency-{part}"))
    topic = names.topic("latency", part)
    try:
        migrate.upgrade(load_settings(database_url=url,
                                      kafka_bootstrap_servers=common.bootstrap()))
        common.create_topic(common.bootstrap(), topic, args.partitions)
        config = producer_config({"bootstrap.servers": common.bootstrap(), **extra},
                                 f"bench-dual-{part}")
        ctx = mp.get_context("spawn")
        queue: Any = ctx.Queue()
        proc = ctx.Process(target=dual_writer, args=(
            url, args.rate, args.latency_warmup + seconds, args.aggregates,
            args.latency_size, queue, config, topic))
        proc.start()
        times: dict[str, tuple[float, float]] = queue.get(
            timeout=args.latency_warmup + seconds + 120)
        proc.join(30)
    finally:
        if not args.keep:
            common.delete_topics(common.bootstrap(), [topic])
            common.drop_database(admin, url)
    start = min(c for c, _ in times.values())
    return {i: t for i, t in times.items() if t[0] - start >= args.latency_warmup}


def floor_summary(phases: list[dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """Pooled and per-phase commit -> ack of the dual write."""
    per_phase = [summary([(a - c) * 1000 for c, a in p.values()]) for p in phases]
    pooled = summary([(a - c) * 1000 for p in phases for c, a in p.values()])
    return {"commit_to_ack": pooled, "phases": per_phase,
            "events": sum(len(p) for p in phases)}


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
            self.produced_at[row[ID]] = now
        super()._produce(batch)


def append_stamps(topic: str, partitions: int, ids: set[str]) -> dict[str, float]:
    """Event id -> the broker's append time, reading the topic from the start."""
    consumer = Consumer({"bootstrap.servers": common.bootstrap(),
                         "group.id": f"bench-stamps-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    stamps: dict[str, float] = {}
    deadline = time.monotonic() + 60
    try:
        while len(stamps) < len(ids) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None and (event_id := common.event_id(msg)):
                    stamps[event_id] = msg.timestamp()[1] / 1000
    finally:
        consumer.close()
    return stamps


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": percentile(ordered, 50), "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else float("nan"),
            "mean_ms": statistics.fmean(ordered) if ordered else float("nan")}


def bench(names: RunNames, args: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    half = args.latency_floor_seconds / 2
    phases = [floor_phase(names, "floor1", args, extra, half)] if half > 0 else []
    result = relay_phase(names, args, extra)
    if half > 0:
        phases.append(floor_phase(names, "floor2", args, extra, half))
        floor = result["dual_write_floor"] = floor_summary(phases)
        f, r = floor["commit_to_ack"], result["commit_to_ack"]
        print(f"  floor: dual write    {floor['events']:,} events, p50 {f['p50_ms']:.1f} ms, p99 "
              f"{f['p99_ms']:.1f} ms, max {f['max_ms']:.1f} ms (before / after the relay: "
              + " / ".join(f"p99 {p['p99_ms']:.1f}" for p in floor["phases"]) + " ms)")
        print(f"  relay - floor        p50 +{r['p50_ms'] - f['p50_ms']:.1f} ms, "
              f"p99 +{r['p99_ms'] - f['p99_ms']:.1f} ms")
    return result


def relay_phase(names: RunNames, args: argparse.Namespace,
                extra: dict[str, str]) -> dict[str, Any]:
    admin = common.admin_url()
    url = common.create_database(admin, names.database("latency"))
    prefix = names.topic("latency")
    topic = f"{prefix}-bench"
    try:
        settings = load_settings(database_url=url, kafka_bootstrap_servers=common.bootstrap(),
                                 topic_template=prefix + "-{aggregatetype}", kafka_config=extra)
        migrate.upgrade(settings)
        common.create_topic(common.bootstrap(), topic, args.partitions)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(Queries.for_settings(settings).notify_trigger)
        return measure(url, settings, topic, args)
    finally:
        if not args.keep:
            common.delete_topics(common.bootstrap(), [topic])
            common.drop_database(admin, url)


def measure(url: str, settings: Any, topic: str, args: argparse.Namespace) -> dict[str, Any]:
    acks: dict[str, float] = {}

    def on_ack(event_id: str, at: float) -> None:
        acks[event_id] = at

    relay = TimedRelay(settings, RelayOptions(batch_size=args.batch_size, listen=True,
                                              poll_interval=1.0,
                                              pipeline_depth=args.pipeline_depth),
                       on_ack=on_ack)
    relay.produced_at, relay.claim_seconds = {}, []
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    time.sleep(2)  # shards acquired, producer connected
    ctx = mp.get_context("spawn")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=steady_writer, args=(
        url, args.rate, args.latency_warmup + args.latency_seconds, args.aggregates,
        args.latency_size, queue,
        args.writer))
    proc.start()
    written: dict[str, float] = queue.get(
        timeout=args.latency_warmup + args.latency_seconds + 120)
    proc.join(30)
    deadline = time.monotonic() + 30
    while len(acks) < len(written) and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.request_stop()
    thread.join(60)
    missing = len(written) - sum(1 for i in written if i in acks)
    if missing:
        raise RuntimeError(f"{missing} events were not acknowledged")
    start = min(written.values())
    warmup = [i for i, at in written.items() if at - start < args.latency_warmup]
    commits = {i: at for i, at in written.items() if at - start >= args.latency_warmup}
    stamps = append_stamps(topic, args.partitions, set(commits))

    order = sorted(commits, key=commits.__getitem__)
    first = commits[order[0]]
    span = (commits[order[-1]] - first) or 1.0
    windows: list[list[str]] = [[] for _ in range(max(1, args.latency_windows))]
    for i in order:
        windows[min(len(windows) - 1, int((commits[i] - first) / span * len(windows)))].append(i)

    def ms(ids: list[str], end: dict[str, float], start: dict[str, float]) -> list[float]:
        return [(end[i] - start[i]) * 1000 for i in ids if i in end and i in start]

    per_window = [summary(ms(w, acks, commits)) for w in windows if w]
    result: dict[str, Any] = {
        "events": len(commits), "achieved_rate": len(commits) / args.latency_seconds,
        "commit_to_ack": summary(ms(order, acks, commits)),
        "windows": per_window,
        "p50_windows": Spread.of(w["p50_ms"] for w in per_window).as_dict(),
        "p99_windows": Spread.of(w["p99_ms"] for w in per_window).as_dict(),
        "commit_to_produce": summary(ms(order, relay.produced_at, commits)),
        "produce_to_ack": summary(ms(order, acks, relay.produced_at)),
        # whole-ms stamps: +0.5 ms centres the truncation
        "commit_to_broker_append": summary([x + 0.5 for x in ms(order, stamps, commits)]),
        "appended_seen": len(stamps),
        "claim_and_produce_ms": summary([s * 1000 for s in relay.claim_seconds]),
        "claims": len(relay.claim_seconds),
        "warmup": summary(ms(warmup, acks, written)),
        "warmup_events": len(warmup),
    }
    if args.latency_dump:
        with open(args.latency_dump, "w") as f:
            for i in order:
                f.write(f"{commits[i] - first:.4f} {(acks[i] - commits[i]) * 1000:.3f} "
                        f"{(relay.produced_at[i] - commits[i]) * 1000:.3f} "
                        f"{(acks[i] - relay.produced_at[i]) * 1000:.3f} {i} {commits[i]:.6f}\n")
    c, w = result["commit_to_ack"], result["warmup"]
    print(f"\n== latency: {len(commits):,} events at {result['achieved_rate']:,.0f}/s "
          f"({args.writer}, {args.latency_size} B payloads; load {common.machine_load()})")
    print(f"  warm-up (not counted) {len(warmup):,} events in {args.latency_warmup:g} s: p50 "
          f"{w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, max {w['max_ms']:.1f} ms")
    print(f"  commit -> ack        p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, "
          f"max {c['max_ms']:.1f} ms")
    for n, w in enumerate(per_window, 1):
        print(f"  window {n}             p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms, "
              f"max {w['max_ms']:.1f} ms")
    for label, key in (("commit -> produce", "commit_to_produce"),
                       ("produce -> ack", "produce_to_ack"),
                       ("commit -> append", "commit_to_broker_append")):
        s = result[key]
        print(f"  {label:<20} p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms")
    k = result["claim_and_produce_ms"]
    print(f"  claims               {result['claims']:,} ({result['claims'] / len(written):.2f} per "
          f"event), each p50 {k['p50_ms']:.2f} ms, p99 {k['p99_ms']:.2f} ms, mean "
          f"{k['mean_ms']:.2f} ms")
    print(f"  p99 over windows: {Spread.of(w['p99_ms'] for w in per_window).show('.1f')} ms")
    return result


if __name__ == "__main__":
    sys.exit("run bench/relay.py (--skip-throughput for the latency phase alone)")
