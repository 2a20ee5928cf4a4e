"""Every benchmark starts and finishes on tiny inputs, against the real stack.

Benchmarks are not run for their figures in CI (docs/benchmarks.md has those); this only
keeps the harness from rotting: each script runs end to end, as a user runs it, and says
what it is expected to say. Each run uses its own database and topic names, so these can
run next to anything else on the stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.kafka]


def bench(script: str, *args: str, timeout: float = 280) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


@pytest.mark.timeout(600)
def test_relay_bench_runs_every_contender_codec_and_phase(
        pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    report_file = tmp_path / "relay.json"
    out = bench("relay.py", "--events", "1500", "--sizes", "200", "--rounds", "1",
                "--codecs", "none,gzip", "--instances", "2", "--rate", "200",
                "--latency-seconds", "2", "--latency-windows", "2",
                "--json", str(report_file), timeout=560)
    report = json.loads(report_file.read_text())
    (size,) = report["sizes"]
    for key in ("relay/native (none)", "relay/raw (gzip)", "relay/floor (none)"):
        assert len(size["ratios"][key]["rounds"]) == 1, key
    for contender in ("native/none", "raw/gzip", "relay/none", "floor"):
        assert size["contenders"][contender]["events_per_s"]["median"] > 0, contender
    assert size["contenders"]["relay/none"]["bytes_per_event_on_disk"] > 200
    for contender in ("native/none", "relay/none"):  # CPU time per event, by part
        cpu = size["contenders"][contender]["cpu_us_per_event"]
        assert cpu["total"]["median"] > 0 and cpu["own"]["median"] > 0, contender
    assert size["ratios"]["relay/native (none)"]["cpu_bound"]["rounds"]
    assert report["instances"]["ratio"]["rounds"]
    assert 390 <= report["latency"]["events"] <= 402
    assert len(report["latency"]["windows"]) == 2
    assert "round 1:" in out


def test_backlog_bench_compares_with_and_without_delivered_rows(
        pg_url: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    report_file = tmp_path / "backlog.json"
    out = bench("backlog.py", "--delivered", "5000", "--events", "300", "--rounds", "1",
                "--partitions", "1", "--explain", "--json", str(report_file))
    report = json.loads(report_file.read_text())
    assert report["databases"]["with"]["delivered"] == 5000
    assert report["databases"]["without"]["delivered"] == 0
    for kind in ("with", "without"):
        assert report[kind]["median"] > 0, kind
        assert "ix_outbox_window" in report["databases"][kind]["explain"], kind
    assert len(report["ratio"]["rounds"]) == 1
    assert "ratio with/without" in out
    assert "round 1:" in out


@pytest.mark.timeout(400)
def test_cdc_bench_measures_both_paths(pg_url: str, kafka_bootstrap: str,
                                       connect_url: str) -> None:
    out = bench("cdc.py", "--events", "500", "--rate", "50", "--seconds", "1",
                "--rounds", "1", timeout=380)
    assert "relay / Debezium burst throughput" in out
    assert "round 1:" in out


def test_saga_bench_counts_every_order(pg_url: str, kafka_bootstrap: str) -> None:
    out = bench("saga.py", "--rate", "10", "--seconds", "2", "--warmup", "2")
    assert "orders: 20 requested, 0 requests failed" in out
    assert "unfinished (not COMPLETED or CANCELLED): 0" in out


def test_publish_bench_prints_rounds(pg_url: str) -> None:
    out = bench("publish.py", "--rounds", "2", "--per-round", "20")
    assert "per round" in out
    assert "/ base" in out


def test_consumer_bench_prints_rounds(pg_url: str, kafka_bootstrap: str) -> None:
    out = bench("consumer.py", "--events", "400", "--rounds", "1")
    assert "ratio dedupe / no-dedupe per round" in out


def test_capture_bench_prints_rounds(pg_url: str) -> None:
    out = bench("capture.py", "--rounds", "2", "--per-round", "20")
    assert "per round, median ms (base / captured / publish)" in out
    assert "trigger cost / publish() cost" in out


def test_tracing_bench_compares_traced_and_untraced(pg_url: str, kafka_bootstrap: str,
                                                    tmp_path: Path) -> None:
    report_file = tmp_path / "tracing.json"
    out = bench("tracing.py", "--events", "1500", "--consumer-events", "300", "--rounds", "1",
                "--json", str(report_file))
    report = json.loads(report_file.read_text())
    for part in ("relay", "relay_steady", "consumer"):
        assert len(report[part]["ratio"]["rounds"]) == 1, part
    recorded = [line for line in out.splitlines() if line.startswith("consumer-traced recorded")]
    assert recorded and int(recorded[0].split()[2]) >= 300  # a span per message, at least
    assert "ratio relay-traced / relay per round" in out
