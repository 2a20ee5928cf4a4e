"""Relay benchmark: the relay against a native librdkafka ceiling and Python's, same run.

    .venv/bin/python bench/relay.py                                # the documented run
    .venv/bin/python bench/relay.py --events 20000 --rounds 2      # a quick look
    .venv/bin/python bench/relay.py --codecs none,gzip,lz4,zstd --skip-latency  # codec table
    .venv/bin/python bench/relay.py --py-spy /tmp/relay.txt        # where the relay's time goes

Throughput, per payload size (``--sizes``, default 200 B, 1 KB and 10 KB; JSON objects whose
bulk is random, so nothing compresses them away): a backlog is committed once into the
run's own database, then in every round, in an order that rotates from round to round,
after a warm-up round that is not counted, each contender delivers the same records:

- **native**: a C program on librdkafka (``bench/native/producer.c``, the relay's own
  librdkafka by default) produces the relay's exact records (keys, values, headers,
  timestamps) from memory with the relay's producer configuration: the ceiling. Clock:
  first produce to last delivery report.
- **raw**: confluent-kafka from Python, the same records and configuration, from memory.
- **relay**: ``outbox relay run`` started as a user starts it (its default ``--processes``:
  one relay process per CPU under a supervisor), as its own process, on the
  backlog (its cursors reset between rounds). Clock: from spawning the process to the
  broker's append stamp of the last record (topics use LogAppendTime; with one replica the
  ack leaves at that append), so start-up, shard locks and the first window all count.
  Also printed: the rate from its first record to its last ("steady").
- **relay1** (not by default): the same with ``--processes 1``, one relay process.
- **relaypy** (not by default): the same with ``OUTBOX_SPEEDUPS=0``: the Python versions
  of the record's JSON compacting instead of outbox/_speedups.c.
- **relaybase** (not by default): the relay of another checkout (``--base PATH``, e.g. a
  ``git worktree`` of an earlier commit), run by this interpreter: a code change against
  the code before it, in the same run.
- **floor**: the database alone: one server-side cursor reading the same rows in ``seq``
  order, nothing else. The relay cannot read faster than this on the same machine.

Each contender and codec (``--codecs``; default: the relay's default codec) writes to its
own topic, so bytes on disk per event (the broker's log segments) are reported per codec.
Reported per round and as medians with their spread: events/s, relay ÷ native, relay ÷ raw.

Latency (bench/relay_latency.py): one event per transaction at ``--rate`` for
``--latency-seconds``, commit -> the relay's delivery report, p50/p99 per window of the run.
``--instances N`` (bench/relay_instances.py): N relay processes against one, alternating.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common, cpu, native  # noqa: E402
from bench.common import Offsets, RunNames, Spread  # noqa: E402
from bench.relay_contenders import (  # noqa: E402
    kafka_config,
    read_records,
    run_floor,
    run_native,
    run_raw,
    run_relay,
    write_backlog,
)
from outbox import migrate  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from relay.loop import RelayOptions  # noqa: E402
from relay.producer import producer_config  # noqa: E402

CONTENDERS = ("native", "raw", "relay", "relay1", "relaypy", "relaybase", "floor")
DEFAULT_CONTENDERS = ("native", "raw", "relay", "floor")


# ----------------------------------------------------------------------------- throughput
def bench_size(names: RunNames, size: int, events: int, args: argparse.Namespace,
               extra: dict[str, str], binary: Path | None) -> dict[str, Any]:
    """Every round of every contender and codec for one payload size."""
    admin = common.admin_url()
    url = common.create_database(admin, names.database(f"s{size}"))
    offsets = Offsets(common.bootstrap())
    topics: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    try:
        migrate.upgrade(Settings(database_url=url))
        written = write_backlog(url, events, args.aggregates, size)
        records = read_records(url)
        record_file = tmp / "records.bin"
        native.write_records(record_file, records)
        value_bytes = sum(len(r[1] or "") for r in records) / len(records)
        print(f"\n== {size} B payloads: {events:,} events (values {value_bytes:,.0f} B on "
              f"average) written in {written:.1f} s; load {common.machine_load()}", flush=True)
        jobs = [(c, codec) for codec in args.codecs for c in args.contenders if c != "floor"]
        if "floor" in args.contenders:
            jobs.append(("floor", ""))
        topic_of: dict[tuple[str, str], str] = {}
        warm = names.topic(size, "warm")
        topics.append(warm)
        common.create_topic(common.bootstrap(), warm, 1)
        for contender, codec in jobs:
            if contender != "floor":
                name = names.topic(size, (codec or "default").replace(":", "-level"),
                                   contender)
                topic_of[(contender, codec)] = name
                topics.append(name + ("-bench" if contender.startswith("relay") else ""))
                common.create_topic(common.bootstrap(), topics[-1], args.partitions)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {job: [] for job in jobs}
        servers = cpu.Servers.of_stack()

        def run_one(contender: str, topic: str, config: dict[str, str]) -> dict[str, Any]:
            if contender == "native":
                assert binary is not None
                return run_native(binary, record_file, topic, warm, config, events)
            if contender == "raw":
                return run_raw(records, topic, warm, config)
            if contender.startswith("relay"):
                return run_relay(url, offsets, topic, config, events, args,
                                 processes=1 if contender == "relay1" else None,
                                 env=({"OUTBOX_SPEEDUPS": "0"} if contender == "relaypy"
                                      else None),
                                 command=base_command(args.base) if contender == "relaybase"
                                 else None)
            return run_floor(url, args.batch_size)

        for r in range(args.rounds + 1):
            line = []
            for contender, codec in common.rotated(jobs, r):
                config = kafka_config(codec or None, extra)
                topic = topic_of.get((contender, codec), "")
                if contender.startswith("relay"):
                    # Measured by run_relay itself, from spawn to exit: not the broker's
                    # work for the bench's append-time reads after it.
                    res = run_one(contender, topic, config)
                else:
                    res, used = cpu.measure(servers, contender == "native",
                                            functools.partial(run_one, contender, topic,
                                                              config))
                    res["cpu_us"] = used.per_event_us(events)
                if r:
                    results[(contender, codec)].append(res)
                line.append(f"{contender}{'/' + codec if codec else ''} {res['rate']:,.0f} "
                            f"({res['cpu_us']['total']:.1f} µs CPU)")
            label = "warm-up" if r == 0 else f"round {r}"
            print(f"{label:>8}: " + ", ".join(line) + f"  (load {common.machine_load()})",
                  flush=True)
        profile: dict[str, Any] | None = None
        if args.py_spy and "relay" in args.contenders:
            # Two more runs, not counted: every sample of every thread, then only the
            # samples of threads holding the GIL (what Python itself costs).
            profile = {}
            for suffix, flags in (("", []), (".gil", ["--gil"])):
                name = f"{args.py_spy}.{size}{suffix}"
                res = run_relay(url, offsets, topic_of[("relay", args.codecs[0])],
                                kafka_config(args.codecs[0] or None, extra), events, args,
                                py_spy=[*flags, "--output", name], processes=1)
                profile[name] = res
                print(f"  under py-spy{' --gil' if flags else ''} (not counted): relay "
                      f"{res['rate']:,.0f} events/s, {res['seconds']:.2f} s from spawn to "
                      f"last ack; profile in {name}")
        return summarise(size, events, results, topic_of, offsets, profile)
    finally:
        offsets.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        if not args.keep:
            common.delete_topics(common.bootstrap(), topics)
            common.drop_database(admin, url)


def summarise(size: int, events: int, results: dict[tuple[str, str], list[dict[str, Any]]],
              topic_of: dict[tuple[str, str], str], offsets: Offsets,
              profile: dict[str, Any] | None) -> dict[str, Any]:
    """Print and return medians, spreads, per-round ratios and bytes on disk."""
    out: dict[str, Any] = {"payload_bytes": size, "events": events, "contenders": {},
                           "ratios": {}, "profile": profile}
    for (contender, codec), runs in results.items():
        rates = Spread.of(r["rate"] for r in runs)
        key = f"{contender}/{codec}" if codec else contender
        entry: dict[str, Any] = {"events_per_s": rates.as_dict()}
        print(f"  {key:<18} events/s {rates.show()}")
        if contender.startswith("relay"):
            steady = Spread.of(r["steady_rate"] for r in runs)
            start = Spread.of(r["start_seconds"] for r in runs)
            entry["steady_events_per_s"] = steady.as_dict()
            entry["start_seconds"] = start.as_dict()
            print(f"  {'':<18} first->last record {steady.show()}; spawn->first record "
                  f"{start.show('.2f')} s")
        if runs and "cpu_us" in runs[0]:
            parts = {part: Spread.of(r["cpu_us"][part] for r in runs)
                     for part in ("own", "postgres", "kafka", "total")}
            entry["cpu_us_per_event"] = {k: v.as_dict() for k, v in parts.items()}
            print(f"  {'':<18} CPU µs an event {parts['total'].show('.1f')} (own "
                  f"{parts['own'].median:.1f}, PostgreSQL {parts['postgres'].median:.1f}, "
                  f"Kafka {parts['kafka'].median:.1f})")
        if contender == "native" and runs:
            entry["librdkafka"] = runs[0]["librdkafka"]
        if contender == "floor" and runs:
            entry["plan"] = runs[0]["plan"]
        topic = topic_of.get((contender, codec))
        if topic:
            name = topic + ("-bench" if contender.startswith("relay") else "")
            on_disk = common.log_bytes(name)
            stored = sum(offsets.ends(name))
            if on_disk is not None and stored:
                entry["bytes_per_event_on_disk"] = on_disk / stored
                print(f"  {'':<18} on disk {on_disk / stored:,.0f} bytes per event")
        out["contenders"][key] = entry
    codecs = sorted({codec for _, codec in results if _ != "floor"})
    for codec in codecs:
        for a, b in (("relay", "native"), ("relay", "raw"), ("raw", "native"),
                     ("relay", "floor"), ("floor", "native"), ("relay1", "native"),
                     ("relay", "relay1"), ("relay", "relaypy"), ("relay", "relaybase")):
            ra = results.get((a, codec if a != "floor" else ""))
            rb = results.get((b, codec if b != "floor" else ""))
            if not ra or not rb:
                continue
            ratio = Spread.of(x["rate"] / y["rate"] for x, y in zip(ra, rb, strict=True))
            # Under load a round can be hit by someone else's burst; the best round of each
            # is the least disturbed, so their ratio is printed next to the median of pairs.
            best = max(x["rate"] for x in ra) / max(y["rate"] for y in rb)
            key = f"{a}/{b}" + (f" ({codec})" if codec else "")
            out["ratios"][key] = {**ratio.as_dict(), "best_over_best": best}
            print(f"  ratio {key:<24} {ratio.show('.2f')}; best/best {best:.2f}")
            if b == "native" and all("cpu_us" in x for x in (*ra, *rb)):
                # With every core busy, a/native cannot exceed native's CPU per event over
                # a's: the bound the throughput ratio is to be read against.
                bound = Spread.of(y["cpu_us"]["total"] / x["cpu_us"]["total"]
                                  for x, y in zip(ra, rb, strict=True))
                out["ratios"][key]["cpu_bound"] = bound.as_dict()
                print(f"  {'':<30} CPU bound (native's CPU per event ÷ {a}'s) "
                      f"{bound.show('.2f')}")
    return out


def base_command(path: str | None) -> list[str]:
    """``outbox`` of the checkout at ``path``, by this interpreter (its packages first)."""
    assert path is not None, "relaybase needs --base"
    code = (f"import sys; sys.path.insert(0, {str(Path(path).resolve())!r}); "
            "from outbox.cli import main; sys.exit(main())")
    return [sys.executable, "-c", code]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=100_000,
                        help="events per size (capped by --max-megabytes)")
    parser.add_argument("--max-megabytes", type=float, default=100.0,
                        help="cap on events x payload size per backlog")
    parser.add_argument("--sizes", default="200,1000,10000",
                        help="payload sizes in bytes (JSON, bulk random), comma-separated")
    parser.add_argument("--codecs", default="",
                        help="compression.type values to compare, e.g. none,gzip,lz4,zstd, "
                             "optionally with a compression.level: gzip:1 (default: the "
                             "relay's default)")
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS),
                        help=f"subset of {','.join(CONTENDERS)} (relay1: the relay with "
                             "--processes 1; relaypy: with OUTBOX_SPEEDUPS=0; relaybase: "
                             "the relay of --base)")
    parser.add_argument("--base", metavar="PATH",
                        help="relaybase: a checkout of the project (e.g. a git worktree of an "
                             "earlier commit) whose relay to run")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (+1 warm-up)")
    parser.add_argument("--aggregates", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=RelayOptions.batch_size)
    parser.add_argument("--pipeline-depth", type=int, default=RelayOptions.pipeline_depth)
    parser.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra producer property for every contender alike")
    parser.add_argument("--native-lib", choices=["wheel", "system"], default="wheel",
                        help="librdkafka of the native producer: confluent-kafka's (the "
                             "relay's) or Debian's")
    parser.add_argument("--instances", type=int, default=0,
                        help="also: this many relay processes against one (0: skip)")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency: events/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-warmup", type=float, default=3.0,
                        help="latency: seconds written first and not counted")
    parser.add_argument("--latency-floor-seconds", type=float, default=10.0,
                        help="latency: seconds of the dual-write floor, half before the "
                             "relay's phase and half after (0: skip)")
    parser.add_argument("--latency-windows", type=int, default=4,
                        help="latency: figures per window of the run (its rounds)")
    parser.add_argument("--latency-size", type=int, default=1000,
                        help="latency: payload bytes")
    parser.add_argument("--writer", choices=["publish", "insert"], default="publish")
    parser.add_argument("--latency-dump", metavar="FILE",
                        help="latency: one line per event: seconds since the first commit, "
                             "commit -> ack, commit -> produce, produce -> ack (ms), its id, "
                             "its commit's Unix time")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="after the rounds, one more relay run under py-spy (raw "
                             "format, per thread), to FILE.<size>; not counted")
    parser.add_argument("--json", metavar="FILE", help="write the whole report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep databases and topics")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.codecs = [c for c in args.codecs.split(",") if c] or [""]
    args.contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders {sorted(unknown)}: use {','.join(CONTENDERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = dict(kv.split("=", 1) for kv in args.kafka_config)
    common.load_env()
    names = RunNames.new("relay")
    binary = None
    if "native" in args.contenders and not args.skip_throughput:
        try:
            binary = native.build(args.native_lib)
        except native.NativeUnavailableError as exc:
            sys.exit(f"bench/relay.py: {exc}")
    default_codec = producer_config({}, "").get("compression.type", "none")
    print(f"run {names.run_id}: relay defaults batch {args.batch_size}, pipeline depth "
          f"{args.pipeline_depth}, default compression.type={default_codec}; extra {extra}; "
          f"{os.cpu_count()} CPUs, load {common.machine_load()} (a shared machine: "
          "development figures)")
    report: dict[str, Any] = {"run": names.run_id, "extra_kafka_config": extra,
                              "default_codec": default_codec, "sizes": []}
    if not args.skip_throughput:
        for size in args.sizes:
            events = max(1, min(args.events, int(args.max_megabytes * 1e6 / size)))
            report["sizes"].append(bench_size(names, size, events, args, extra, binary))
    if args.instances > 0:
        from bench import relay_instances

        report["instances"] = relay_instances.bench(names, args, extra)
    if not args.skip_latency:
        from bench import relay_latency

        report["latency"] = relay_latency.bench(names, args, extra)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
