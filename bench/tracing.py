"""Tracing's cost: the relay and the consumer with OpenTelemetry spans recorded against the
same without, same run, same rows and messages.

    .venv/bin/python bench/tracing.py                      # the documented run
    .venv/bin/python bench/tracing.py --events 20000 --rounds 2
    .venv/bin/python bench/tracing.py --skip-consumer --py-spy /tmp/t.prof  # + profiles

Every row and message carries a ``traceparent`` (each its own trace), so tracing does all
its work: the relay's ``send`` span per batch with a link per row (up to 32), the
consumer's ``process`` span per handler call, the child of the header's context.

- **relay** / **relay-traced**: ``outbox relay run`` as its own process on the same backlog
  (cursors reset between rounds, bench/relay_contenders.run_relay), the traced one through
  bench/traced_outbox.py: an SDK tracer provider, a BatchSpanProcessor and an exporter that
  drops the spans. Clock: spawn to the broker's append stamp of the last record; also
  reported, "steady": first record to last (without start-up, where the SDK's imports
  count), and events per CPU second of the relay process (user + system, from
  getrusage: what tracing costs the relay, much less disturbed by other load than the
  clock). ``--relay-variants relay,relay-traced,relay-sdk`` adds **relay-sdk**: the traced
  command with the SDK imported but no provider set (no span made): start-up and process
  without the spans.
- **consumer** / **consumer-traced**: the deduped consumer with a sync handler writing one
  row (bench/consumer.run), in this process, the traced one with the same SDK set-up.

Rounds alternate the order (rotated), after a warm-up round that is not counted; payloads
are random (incompressible); database and topics are unique to the run. Reported: events/s
per round with the spread, and traced / untraced per round (target: relay >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.util._once import Once  # noqa: E402

from bench import common, consumer, traced_outbox  # noqa: E402
from bench.common import Offsets, RunNames, Spread  # noqa: E402
from bench.relay_contenders import kafka_config, run_relay, write_backlog  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from relay.loop import RelayOptions  # noqa: E402

TRACEPARENTS = ("update outbox set traceparent = '00-' || md5(id::text) || '-' "
                "|| substr(md5(seq::text), 1, 16) || '-01'")
TRACED_RELAY = [sys.executable, str(ROOT / "bench" / "traced_outbox.py")]


def run_variant(url: str, offsets: Offsets, prefix: str, config: dict[str, str],
                args: argparse.Namespace, variant: str,
                py_spy: list[str] | None = None) -> dict[str, float]:
    """One relay run of ``variant``: relay (``outbox``), relay-traced (bench/traced_outbox.py)
    or relay-sdk (the same, the SDK imported but no provider: no span)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if variant == "relay-sdk":
        os.environ[traced_outbox.NO_PROVIDER_ENV] = "1"
    try:
        result = run_relay(url, offsets, prefix, config, args.events, args, py_spy=py_spy,
                           command=None if variant == "relay" else TRACED_RELAY)
    finally:
        os.environ.pop(traced_outbox.NO_PROVIDER_ENV, None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The relay process's CPU (user + system, start-up and shutdown included): far less
    # sensitive than the clock to what else runs on a shared machine.
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**result, "cpu_rate": args.events / max(cpu, 1e-3), "cpu_seconds": cpu}


def bench_relay(names: RunNames, args: argparse.Namespace) -> dict[str, list[float]]:
    admin = common.admin_url()
    url = common.create_database(admin, names.database("relay"))
    offsets = Offsets(common.bootstrap())
    prefixes = {v: names.topic(v) for v in args.relay_variants}
    rates: dict[str, list[float]] = {v: [] for v in (*prefixes, *(p + "-steady"
                                                              for p in prefixes),
                                                     *(p + "-start" for p in prefixes),
                                                     *(p + "-cpu" for p in prefixes))}
    try:
        migrate.upgrade(Settings(database_url=url))
        write_backlog(url, args.events, 1000, args.size)
        with psycopg.connect(url) as conn:
            conn.execute(TRACEPARENTS)
        for prefix in prefixes.values():
            common.create_topic(common.bootstrap(), f"{prefix}-bench", args.partitions)
        config = kafka_config(None, {})
        for r in range(args.rounds + 1):
            for variant in common.rotated(list(prefixes), r):
                result = run_variant(url, offsets, prefixes[variant], config, args, variant)
                if r > 0:  # round 0 warms both
                    rates[variant].append(result["rate"])
                    rates[variant + "-steady"].append(result["steady_rate"])
                    rates[variant + "-start"].append(result["start_seconds"])
                    rates[variant + "-cpu"].append(result["cpu_rate"])
                print(f"round {r} {variant:<15} {result['rate']:>10,.0f} events/s, steady "
                      f"{result['steady_rate']:>10,.0f}, per CPU second "
                      f"{result['cpu_rate']:>10,.0f}, first record at "
                      f"{result['start_seconds']:.2f} s{'  (warm-up)' if r == 0 else ''}"
                      f"  load {common.machine_load()}", flush=True)
        if args.py_spy:  # one more run of each under py-spy, not counted
            for variant, prefix in prefixes.items():
                name = f"{args.py_spy}.{variant}"
                result = run_variant(url, offsets, prefix, config, args, variant,
                                     py_spy=["--output", name])
                print(f"under py-spy (not counted): {variant} {result['rate']:,.0f} events/s, "
                      f"{result['seconds']:.2f} s; profile {name}", flush=True)
    finally:
        offsets.close()
        common.drop_database(admin, url)
        common.delete_topics(common.bootstrap(), [f"{p}-bench" for p in prefixes.values()])
    return rates


def fill_traced_topic(bootstrap: str, topic: str, events: int, size: int) -> None:
    """bench/consumer's messages, each with a traceparent header of its own trace."""
    from confluent_kafka import Producer

    common.create_topic(bootstrap, topic, consumer.PARTITIONS)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for n in range(events):
        key = f"k{n % 1000}"
        value = json.dumps(common.payload(n, key, size), separators=(",", ":")).encode()
        parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value, headers=[
                    ("id", str(uuid.uuid4()).encode()), ("eventType", b"Thing"),
                    ("traceparent", parent.encode())])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0


def _untraced() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def bench_consumer(names: RunNames, args: argparse.Namespace) -> dict[str, list[float]]:
    admin = common.admin_url()
    bootstrap = common.bootstrap()
    url = common.create_database(admin, names.database("consumer"))
    topic = names.topic("consumer")
    settings = Settings(database_url=url, kafka_bootstrap_servers=bootstrap)
    variants = ["consumer", "consumer-traced"]
    rates: dict[str, list[float]] = {v: [] for v in variants}
    spans = 0
    try:
        migrate.upgrade(settings)
        with psycopg.connect(url) as conn:
            conn.execute("create table effects (event_id uuid, n int)")
        fill_traced_topic(bootstrap, topic, args.events, args.size)
        for r in range(args.rounds + 1):
            for variant in common.rotated(variants, r):
                provider = None
                if variant.endswith("traced"):
                    _untraced()
                    provider, exporter = traced_outbox.install()
                rate = consumer.run(settings, topic, names.group(variant, r), args.events,
                                    dedupe=True)
                if provider is not None:
                    provider.shutdown()
                    spans += exporter.count
                    _untraced()
                if r > 0:
                    rates[variant].append(rate)
                print(f"round {r} {variant:<15} {rate:>10,.0f} events/s"
                      f"{'  (warm-up)' if r == 0 else ''}", flush=True)
    finally:
        common.drop_database(admin, url)
        common.delete_topics(bootstrap, [topic])
    print(f"consumer-traced recorded {spans} spans over {args.rounds + 1} rounds")
    return rates


def report(rates: dict[str, list[float]], base: str, target: str = "",
           traced: str = "") -> dict[str, Any]:
    traced = traced or base + "-traced"
    for variant in (base, traced):
        print(f"{variant:<15} events/s {Spread.of(rates[variant]).show()}")
    ratio = Spread.of(t / u for t, u in zip(rates[traced], rates[base], strict=True))
    print(f"ratio {traced} / {base} per round: {ratio.show('.2f')}{target}")
    return {"rates": rates, "ratio": ratio.as_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--consumer-events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (+1 warm-up)")
    parser.add_argument("--size", type=int, default=1000, help="payload bytes (bulk random)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=RelayOptions.batch_size)
    parser.add_argument("--pipeline-depth", type=int, default=RelayOptions.pipeline_depth)
    parser.add_argument("--relay-variants", type=lambda v: v.split(","),
                        default=["relay", "relay-traced"],
                        help="comma-separated, of relay, relay-traced, relay-sdk (the SDK "
                             "imported, no provider: start-up and process without spans)")
    parser.add_argument("--skip-consumer", action="store_true")
    parser.add_argument("--skip-relay", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="after the rounds, one more run of each relay under py-spy (raw "
                             "format, --threads) into FILE.relay and FILE.relay-traced "
                             "(bench/pyspy_summary.py reads them)")
    args = parser.parse_args(argv)
    common.load_env()
    names = RunNames.new("tracing")
    print(f"run {names.run_id}: relay {args.events} events of {args.size} B, batch "
          f"{args.batch_size}, depth {args.pipeline_depth}; consumer {args.consumer_events}; "
          f"{args.rounds} rounds + 1 warm-up; load {common.machine_load()} (a shared "
          "machine: development figures)", flush=True)
    out: dict[str, Any] = {"run": names.run_id}
    if not args.skip_relay:
        rates = bench_relay(names, args)
        for variant in args.relay_variants:
            if variant != "relay" and "relay" in args.relay_variants:
                # relay-traced's figures are "relay", "relay_steady", "relay_cpu"
                key = "relay" if variant == "relay-traced" else variant.replace("-", "_")
                out[key] = report(rates, "relay", "  (target >= 0.9)", traced=variant)
                # from the first record to the last: without the process's start-up (imports)
                out[key + "_steady"] = report(rates, "relay-steady", "  (target >= 0.9)",
                                              traced=variant + "-steady")
                # events per CPU second of the relay process: the same ratio, less noise
                out[key + "_cpu"] = report(rates, "relay-cpu", "", traced=variant + "-cpu")
        for variant in args.relay_variants:
            print(f"{variant:<15} spawn to first record, s: "
                  f"{Spread.of(rates[variant + '-start']).show('.2f')}")
        print(f"load at the end {common.machine_load()}")
    if not args.skip_consumer:
        args.events = args.consumer_events
        out["consumer"] = report(bench_consumer(names, args), "consumer")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
