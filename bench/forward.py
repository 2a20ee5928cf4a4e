"""``outbox forward`` throughput against a local endpoint that answers at once.

    .venv/bin/python bench/forward.py                      # 10,000 events, 3 rounds
    .venv/bin/python bench/forward.py --events 20000 --rounds 5 --keys 200

The endpoint is a separate process (uvicorn, a bare ASGI app answering 200 at once and
counting requests). Per round, in alternating order:

- **forward**: a Forwarder (consumers/forward.py, one route) already in its group (a
  warm-up event went through), then ``--events`` records produced in a burst; the clock runs
  from the first produce to the endpoint having counted the last request;
- **raw** and **raw-concurrent**: the same requests without Kafka or the database, from
  one sequential httpx client, and from ``--concurrency`` threads sharing one (the
  forwarder's own concurrency): the native ceiling of the endpoint and the client.

Payloads are ``bench.common.payload`` (saga-like JSON, bulk random) of ``--payload-bytes``;
each round has its own database, topic and group (``bench.common.RunNames``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from consumers.forward import Forwarder  # noqa: E402
from consumers.forward_config import build_config  # noqa: E402
from consumers.runtime import ConsumerOptions  # noqa: E402
from outbox import migrate  # noqa: E402
from outbox.settings import Settings  # noqa: E402
from services.launcher import free_port  # noqa: E402
from tests.harness.kafka import produce  # noqa: E402


def serve(port: int) -> None:
    """The endpoint: 200 to every POST, ``GET /count`` says how many it has answered."""
    import uvicorn

    count = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal count
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        if scope["method"] == "POST":
            count += 1
            body = b'{"ok":true}'
        else:
            body = str(count).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http="h11")


Record = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]


def records(n: int, keys: int, size: int, rnd: random.Random) -> list[Record]:
    """``n`` records in the toolkit's format, payloads of ``size`` bytes (common.payload)."""
    out: list[Record] = []
    for i in range(n):
        key = f"order-{rnd.randrange(keys)}"
        body = common.payload(i, key, size)
        out.append((key.encode(), json.dumps(body, separators=(",", ":")).encode(),
                    [("id", body["eventId"].encode()), ("eventType", b"OrderUpdated")]))
    return out


def count(url: str) -> int:
    return int(httpx.get(url + "/count", timeout=5).text)


def wait_count(url: str, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count(url) >= target:
            return time.monotonic()
        time.sleep(0.02)
    raise RuntimeError(f"endpoint saw {count(url)} of {target} requests in {timeout:.0f}s")


def run_forward(args: argparse.Namespace, names: common.RunNames, round_: int, url: str,
                rnd: random.Random) -> float:
    admin, bootstrap = common.admin_url(), common.bootstrap()
    db = common.create_database(admin, names.database(f"r{round_}"))
    topic = names.topic(f"r{round_}")
    try:
        settings = Settings(database_url=db, kafka_bootstrap_servers=bootstrap)
        migrate.upgrade(settings)
        common.create_topic(bootstrap, topic, 3)
        config = build_config({"group": names.group(f"r{round_}"),
                               "concurrency": args.concurrency,
                               "routes": {"hook": {"url": url + "/hook", "topics": [topic]}}},
                              "bench", {})
        forwarder = Forwarder(settings, config, options=ConsumerOptions(poll_timeout=0.1))
        thread = threading.Thread(target=forwarder.run, daemon=True)
        thread.start()
        before = count(url)
        produce(bootstrap, topic, records(1, args.keys, args.payload_bytes, rnd))
        wait_count(url, before + 1, 60)  # the group has joined; the route is warm
        batch = records(args.events, args.keys, args.payload_bytes, rnd)
        started = time.monotonic()
        produce(bootstrap, topic, batch)
        ended = wait_count(url, before + 1 + args.events, 600)
        forwarder.request_stop()
        thread.join(30)
        return float(args.events) / (ended - started)
    finally:
        common.drop_database(admin, db)
        common.delete_topics(bootstrap, [topic, topic + ".dlq"])


def run_raw(args: argparse.Namespace, url: str, rnd: random.Random, threads: int) -> float:
    batch = records(args.events, args.keys, args.payload_bytes, rnd)
    with httpx.Client(timeout=10) as client:
        client.post(url + "/hook", content=b"{}")

        def post(record: tuple[bytes | None, bytes | None, list[Any]]) -> None:
            key, value, headers = record
            client.post(url + "/hook", content=value, headers={
                "Content-Type": "application/json", "Idempotency-Key": str(headers[0][1]),
                "Outbox-Event-Type": "OrderCreated", "X-Key": (key or b"").decode()})

        started = time.monotonic()
        if threads == 1:
            for record in batch:
                post(record)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(post, batch))
        return float(args.events) / (time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the forwarder's requests in flight (and raw-concurrent's threads)")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    common.load_env()
    names = common.RunNames.new("forward")
    print(f"load average {common.machine_load()} at the start", flush=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)],
                              env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                count(url)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rnd = random.Random(15)
        sides = ["forward", "raw", "raw-concurrent"]
        results: dict[str, list[float]] = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side in common.rotated(sides, round_):
                if side == "forward":
                    rate = run_forward(args, names, round_, url, rnd)
                else:
                    rate = run_raw(args, url, rnd, 1 if side == "raw" else args.concurrency)
                results[side].append(rate)
                print(f"round {round_} {side:<15} {rate:8,.0f} events/s", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    medians = {side: statistics.median(values) for side, values in results.items()}
    print(f"\n{args.events:,} events of {args.payload_bytes} B over {args.keys} keys, "
          f"{args.rounds} rounds, concurrency {args.concurrency}")
    for side, values in results.items():
        print(f"{side:<15} median {medians[side]:8,.0f} events/s  ("
              + " / ".join(f"{v:,.0f}" for v in values) + ")")
    print(f"forward / raw = {medians['forward'] / medians['raw']:.2f}, forward / "
          f"raw-concurrent = {medians['forward'] / medians['raw-concurrent']:.2f}; load "
          f"average {common.machine_load()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
