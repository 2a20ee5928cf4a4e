"""`outbox relay run --processes N`: a supervising parent and N relay processes, against
the real stack: they share the shards, stop together, and kill -9 of a child or of the
parent loses nothing and keeps per-aggregate order once restarted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from outbox.exit_codes import EXIT_OK, EXIT_WORKER_DIED
from outbox.locks import RELAY_SHARD_LOCK_NAMESPACE
from relay.queries import Queries
from relay.shards import ShardOwnership
from tests.harness.kafka import create_topic
from tests.relay.conftest import (
    check_kafka_order,
    consume_topic,
    expected_order,
    insert_events,
    kill_hard,
    make_events,
    spawn_relay,
)
from tests.relay.test_crash import Writer, stop, wait_drained

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

OWNERS = ("select pid, count(*) from pg_locks where locktype = 'advisory' and objsubid = 2 "
          "and classid = %s and database = (select oid from pg_database "
          "where datname = current_database()) group by pid")


STARTED: list[int] = []  # every parent and child pid a test started


@pytest.fixture(autouse=True)
def _nothing_left_running() -> Iterator[None]:
    """A failed test kills what it started rather than leave relays running."""
    yield
    while STARTED:
        pid = STARTED.pop()
        if not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    STARTED.append(proc.pid)
    return proc


def children(log: Path, starts: int, timeout: float = 30) -> list[int]:
    """The child pids of the ``starts``-th supervisor start logged (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(line)["pids"] for line in
                 (log.read_text().splitlines() if log.exists() else [])
                 if '"relay_supervisor_start"' in line]
        if len(found) >= starts:
            pids = [int(p) for p in found[starts - 1]]
            STARTED.extend(pids)
            return pids
        assert time.monotonic() < deadline, "the supervisor did not start its processes"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pids: list[int], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"{what}: {[p for p in pids if not gone(p)]}"
        time.sleep(0.1)


def shard_owners(url: str) -> dict[int, int]:
    """Shards held per database session (backend pid)."""
    with psycopg.connect(url) as conn:
        return {int(pid): int(n) for pid, n in
                conn.execute(OWNERS, (RELAY_SHARD_LOCK_NAMESPACE,)).fetchall()}


@pytest.mark.slow
def test_processes_share_the_shards_and_kill_9_of_a_child_or_the_parent_loses_nothing(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    topic = f"{prefix}-order"
    create_topic(kafka_bootstrap, topic, partitions=4)
    log = tmp_path / "relay.log"
    insert_events(outbox_url, make_events(6000, aggregates=60, start=-6000))
    writer = Writer(outbox_url, transactions=100)
    writer.start()

    # 1. Three processes share the shards; kill -9 of one child mid-stream: the parent
    # stops the others and exits non-zero (a dead worker makes the unit fail).
    parent = started(spawn_relay(outbox_url, kafka_bootstrap, prefix, "--processes", "3",
                                 "--batch-size", "200", log=log))
    pids = children(log, 1)
    assert len(pids) == 3
    deadline = time.monotonic() + 30
    while len(owners := shard_owners(outbox_url)) != 3 or sum(owners.values()) != 256:
        assert time.monotonic() < deadline, f"shards not shared by three sessions: {owners}"
        time.sleep(0.1)
    os.kill(pids[1], signal.SIGKILL)
    assert parent.wait(60) == EXIT_WORKER_DIED, log.read_text()[-3000:]
    wait_gone(pids, 10, "children left running after a child died")
    assert "relay_process_died" in log.read_text()

    # 2. Restarted; kill -9 of the parent mid-stream: the children see their pipe end,
    # drain and exit (no orphan keeps relaying).
    parent = started(spawn_relay(outbox_url, kafka_bootstrap, prefix, "--processes", "2",
                                 "--batch-size", "200", log=log))
    pids = children(log, 2)
    time.sleep(1.0)
    kill_hard(parent)
    wait_gone(pids, 40, "children kept running after kill -9 of the parent")
    assert "relay_orphaned" in log.read_text()

    # 3. Restarted once more: it delivers everything, in per-aggregate order.
    writer.join(120)
    assert writer.error is None
    parent = started(spawn_relay(outbox_url, kafka_bootstrap, prefix, "--processes", "2",
                                 log=log))
    pids = children(log, 3)
    try:
        wait_drained(outbox_url)
    finally:
        assert stop(parent) == EXIT_OK, log.read_text()[-3000:]
    wait_gone(pids, 10, "children left running after a clean stop")
    total = 6000 + writer.written
    records = consume_topic(kafka_bootstrap, topic, total)
    duplicates = check_kafka_order(records, expected_order(outbox_url))
    assert len(records) == total + duplicates
    print(f"--processes: {total} events, {duplicates} duplicates after two kills")


def test_default_is_several_processes_each_with_its_own_metrics_port(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """No --processes: one relay process per CPU of this machine; --metrics-port P:
    process i serves P + i; SIGTERM drains all of them and exits 0."""
    from relay.supervisor import default_processes
    from tests.relay.test_startup import free_port, health

    count = default_processes()
    port = free_port()
    log = tmp_path / "relay.log"
    env = {**os.environ, "OUTBOX_DATABASE_URL": outbox_url,
           "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": prefix + "-{aggregatetype}"}
    from tests.relay.conftest import OUTBOX_BIN

    with open(log, "ab") as out:
        proc = started(subprocess.Popen([str(OUTBOX_BIN), "relay", "run", "--metrics-port",
                                         str(port), "--poll-interval", "0.2"],
                                        env=env, stdout=out, stderr=out))
    try:
        if count > 1:
            assert len(children(log, 1)) == count
        deadline = time.monotonic() + 30
        while not all((h := health(port + i)) is not None and h[0] == 200
                      for i in range(count)):
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        code = stop(proc)
    assert code == EXIT_OK, log.read_text()[-3000:]
    assert log.read_text().count('"relay_stop"') == count


def test_the_default_is_one_process_per_cpu_up_to_four(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay import supervisor

    for cpus, expected in ((1, 1), (2, 2), (3, 3), (64, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert supervisor.default_processes() == expected, cpus


def test_a_relay_started_with_siblings_takes_only_its_share_while_it_is_alone(
        outbox_url: str) -> None:
    """relay.shards: with ``siblings`` (``--processes``) the fair share counts the
    processes started together, not only the sessions already up."""
    queries = Queries("public", "outbox")
    with psycopg.connect(outbox_url, autocommit=True,
                         application_name=f"{queries.application_name}:t") as conn:
        for siblings, share in ((2, 128), (3, 86), (1, 256)):
            shards = ShardOwnership(queries, siblings=siblings)
            acquired, released = shards.rebalance(conn, lambda _shard: True)
            assert (len(acquired), released) == (share, [])
            shards.release_all(conn)


def test_processes_started_together_each_take_their_share_from_the_start(
        outbox_url: str, kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """Two processes: each takes 128 shards when it starts, none takes all 256 and gives
    half back at the next rebalance (which left the other idle for its first 2 s)."""
    log = tmp_path / "relay.log"
    parent = started(spawn_relay(outbox_url, kafka_bootstrap, prefix, "--processes", "2",
                                 log=log))
    children(log, 1)
    try:
        deadline = time.monotonic() + 30
        while sorted((owners := shard_owners(outbox_url)).values()) != [128, 128]:
            assert time.monotonic() < deadline, f"shards not split 128/128: {owners}"
            time.sleep(0.1)
        time.sleep(3.0)  # past the first rebalance (--rebalance-interval 2 s)
    finally:
        assert stop(parent) == EXIT_OK, log.read_text()[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()
              if line.startswith("{")]
    acquired = [e["shards"] for e in events if e.get("action") == "shards_acquired"]
    assert acquired == [128, 128], acquired
    assert not [e for e in events if e.get("action") == "shards_released"]


def test_shards_another_relay_holds_are_made_up_from_the_free_ones(outbox_url: str) -> None:
    """relay.shards tries as many locks as it wants shards, in one statement; a shard
    another relay took meanwhile (here: one it cannot see) is made up from the next free
    ones, and no lock is taken beyond what it reports."""
    queries = Queries("public", "outbox")
    blind = Queries("public", "outbox")
    blind.__dict__["shard_owners"] = "select 1 where false"  # sees no owner at all
    app = queries.application_name
    with psycopg.connect(outbox_url, autocommit=True, application_name=f"{app}:a") as a, \
            psycopg.connect(outbox_url, autocommit=True, application_name=f"{app}:b") as b:
        first, second = ShardOwnership(queries), ShardOwnership(blind)
        taken_a, _ = first.rebalance(a, lambda _shard: True)
        taken_b, _ = second.rebalance(b, lambda _shard: True)
        try:
            assert (len(taken_a), len(taken_b)) == (128, 128)
            assert sorted(taken_a + taken_b) == list(range(256))
            held = b.execute("select count(*) from pg_locks where pid = pg_backend_pid() "
                             "and locktype = 'advisory'").fetchone()
            assert held == (128,)
        finally:
            first.release_all(a)
            second.release_all(b)
