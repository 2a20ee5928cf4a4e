"""``--instances N`` of bench/relay.py: N relay processes sharing the shards against one.

Each round, in alternating order, for k = 1 and k = N: a new backlog of ``--events`` rows
is written in one transaction left open; k ``outbox relay run`` processes start; once they
own all 256 shards between them in fair shares (a ``pg_locks`` query every 0.1 s, before
the clock), the backlog commits. Clock: from that commit to the broker's append stamp of
the last record (LogAppendTime), waited for by the topic's watermarks, not by querying the
table while the relays work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from typing import Any

import psycopg

from bench import common
from bench.common import Offsets, RunNames, Spread
from outbox import migrate
from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE
from outbox.settings import Settings

SHARES = ("select count(*) from pg_locks where locktype = 'advisory' and objsubid = 2 "
          "and classid = %s and database = (select oid from pg_database where datname = "
          "current_database()) group by pid")


def one_round(url: str, offsets: Offsets, prefix: str, count: int,
              args: argparse.Namespace, extra: dict[str, str], size: int) -> float:
    from bench.relay_contenders import outbox_command, write_backlog

    topic = f"{prefix}-bench"
    before = offsets.ends(topic)
    writer = psycopg.connect(url)
    write_backlog(url, args.events, args.aggregates, size, conn=writer)
    env = {**os.environ, "OUTBOX_DATABASE_URL": url,
           "OUTBOX_TOPIC_TEMPLATE": prefix + "-{aggregatetype}",
           "OUTBOX_KAFKA_CONFIG": json.dumps(extra)}
    cmd = [*outbox_command(), "relay", "run", "--batch-size", str(args.batch_size),
           "--pipeline-depth", str(args.pipeline_depth), "--log-level", "warning",
           "--log-format", "text", "--processes", "1"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(count)]
    try:
        share = -(-256 // count)
        counts: list[int] = []
        with psycopg.connect(url, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                counts = [int(r[0]) for r in watch.execute(
                    SHARES, (RELAY_SHARD_LOCK_NAMESPACE,)).fetchall()]
                if len(counts) == count and sum(counts) == 256 and max(counts) <= share:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"relays did not share the shards: {counts}")
        writer.commit()
        committed = time.time()
        after = offsets.wait_total(topic, sum(before) + args.events, timeout=900,
                                   alive=lambda: all(p.poll() is None for p in procs))
        _, last = offsets.append_span(topic, before, after)
    finally:
        writer.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    return float(args.events / (last - committed))


def bench(names: RunNames, args: argparse.Namespace, extra: dict[str, str]) -> dict[str, Any]:
    admin = common.admin_url()
    url = common.create_database(admin, names.database("instances"))
    prefix = names.topic("instances")
    offsets = Offsets(common.bootstrap())
    size = args.sizes[0]
    try:
        migrate.upgrade(Settings(database_url=url))
        common.create_topic(common.bootstrap(), f"{prefix}-bench", args.partitions)
        print(f"\n== {args.instances} relay processes against 1: {args.events:,} events of "
              f"{size} B per round, backlog committed once the shards are shared")
        rates: dict[int, list[float]] = {1: [], args.instances: []}
        for r in range(args.rounds + 1):
            line = []
            for count in common.rotated([1, args.instances], r):
                rate = one_round(url, offsets, prefix, count, args, extra, size)
                if r:
                    rates[count].append(rate)
                line.append(f"x{count} {rate:,.0f}")
            print(f"{'warm-up' if r == 0 else f'round {r}':>8}: " + ", ".join(line)
                  + f"  (load {common.machine_load()})", flush=True)
        ratio = Spread.of(n / one for n, one in zip(rates[args.instances], rates[1],
                                                    strict=True))
        for count, values in rates.items():
            print(f"  relay x{count:<3} events/s {Spread.of(values).show()}")
        print(f"  ratio x{args.instances}/x1 {ratio.show('.2f')}")
        return {"instances": args.instances, "x1": Spread.of(rates[1]).as_dict(),
                f"x{args.instances}": Spread.of(rates[args.instances]).as_dict(),
                "ratio": ratio.as_dict()}
    finally:
        offsets.close()
        if not args.keep:
            common.delete_topics(common.bootstrap(), [f"{prefix}-bench"])
            common.drop_database(admin, url)
