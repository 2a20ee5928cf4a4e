"""CPU time spent on a piece of work: by the contender itself, PostgreSQL and the broker.

On a machine whose cores are all busy (the relay, PostgreSQL and Kafka share two here),
throughput is bounded by CPU time per event, so the ratio of two contenders' CPU per event
bounds the ratio of their throughputs: if the native producer costs the machine X µs an
event and the relay Y, the relay cannot reach more than X / Y of the native rate unless it
has cores the native run left idle.

The servers are the local stack's (``bench.common.stack_dir()``): the PostgreSQL
postmaster (``postgres/data/postmaster.pid``) and the Kafka broker (``run/kafka.pid``),
each counted with every process under it, live or already reaped (``/proc/<pid>/stat``:
utime and stime, plus cutime and cstime of the children it waited for). The contender's own
time is ``getrusage``: of this process (``RUSAGE_SELF``, an in-process contender) or of the
children it waited for (``RUSAGE_CHILDREN``, a spawned one, with everything they forked).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import common

T = TypeVar("T")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from the 3rd (state) on


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_seconds(pid: int, tree: dict[int, list[int]] | None = None) -> float:
    """CPU seconds of ``pid`` and every process under it, live or reaped."""
    tree = _children() if tree is None else tree
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime: the 14th to 17th fields.
    own = sum(int(v) for v in fields[11:15]) / TICK
    return own + sum(tree_seconds(child, tree) for child in tree.get(pid, []))


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Servers:
    """The pids of the local stack's PostgreSQL and Kafka (None: not found)."""

    postgres: int | None
    kafka: int | None

    @classmethod
    def of_stack(cls) -> Servers:
        stack = common.stack_dir()
        return cls(_pid(stack / "postgres" / "data" / "postmaster.pid"),
                   _pid(stack / "run" / "kafka.pid"))

    def seconds(self) -> tuple[float, float]:
        tree = _children()
        return (tree_seconds(self.postgres, tree) if self.postgres else 0.0,
                tree_seconds(self.kafka, tree) if self.kafka else 0.0)


def _own(spawned: bool) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if spawned else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of one run: the contender's own, PostgreSQL's and the broker's."""

    own: float
    postgres: float
    kafka: float

    @property
    def total(self) -> float:
        return self.own + self.postgres + self.kafka

    def per_event_us(self, events: int) -> dict[str, float]:
        scale = 1e6 / max(events, 1)
        return {"own": self.own * scale, "postgres": self.postgres * scale,
                "kafka": self.kafka * scale, "total": self.total * scale}


def snapshot(servers: Servers, spawned: bool) -> Cpu:
    """Cumulative CPU seconds now (own: of this process, or of its waited-for children)."""
    pg, kafka = servers.seconds()
    return Cpu(_own(spawned), pg, kafka)


def since(servers: Servers, before: Cpu, spawned: bool) -> Cpu:
    """CPU seconds spent since ``before`` (a :func:`snapshot` with the same ``spawned``)."""
    now = snapshot(servers, spawned)
    return Cpu(now.own - before.own, now.postgres - before.postgres, now.kafka - before.kafka)


def measure(servers: Servers, spawned: bool, work: Callable[[], T]) -> tuple[T, Cpu]:
    """Run ``work`` and return its result with the CPU time it cost (``spawned``: the work
    runs in child processes this process waits for; otherwise in this process)."""
    before = snapshot(servers, spawned)
    result = work()
    return result, since(servers, before, spawned)
