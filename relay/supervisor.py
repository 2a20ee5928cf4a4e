"""``outbox relay run --processes N``: N relay processes under one supervising parent.

The relay's hot loop is one Python thread (one GIL), so one process cannot use more than
about one core; N processes share the 256 shards through advisory locks
(relay.shards) exactly as N separately started relays do. This module only starts and
stops them:

- The parent forks the children after the start-up checks (nothing of librdkafka or
  psycopg is alive in it then, and a bad configuration fails once, in one line). Each
  child runs a whole relay (its own instance id, database sessions, producer, and
  ``--metrics-port`` + its index).
- Stopping: each child has a pipe from the parent. On SIGTERM/SIGINT the parent writes
  "stop" to every child (a drain, as one relay's first signal); on a second signal
  "abort" (exit at once). A pipe, not a forwarded signal, so a child that also got the
  signal itself (Ctrl-C reaches the whole process group, systemd signals every process
  of the unit) still drains once rather than taking the two for "exit now". End of file
  on the pipe (the parent died, even by kill -9) is a stop too: no orphan keeps running.
- A child that exits while nobody asked makes the parent stop the others and exit
  non-zero: the child's code, or EXIT_WORKER_DIED for a child killed by a signal or
  exiting 0 on its own (docs/operations.md: a supervisor outside restarts the unit).
  Nothing is lost either way: a child's crash is a relay's crash (kill -9 safe), and its
  shards wait for the restart, or for the other children's next rebalance if the parent
  was not stopping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from outbox import tracing
from outbox.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_WORKER_DIED
from outbox.names import SHARD_COUNT

log = logging.getLogger("outbox.relay")

STOP = b"s"
ABORT = b"a"

# child(index, stop_fd) -> exit code; runs in the forked child
Child = Callable[[int, int], int]


# The default's cap: each process holds three database sessions and a producer, and on a
# two-core machine the second process gained only 2-17 % (docs/benchmarks.md); more is an
# explicit --processes.
MAX_DEFAULT_PROCESSES = 4


def default_processes() -> int:
    """The CPUs this process may run on, at most MAX_DEFAULT_PROCESSES."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_PROCESSES, SHARD_COUNT))


def watch_parent(fd: int, request_stop: Callable[[], None]) -> threading.Thread:
    """In a child: a thread reading the parent's pipe; "stop" or end of file (the parent
    is gone) calls ``request_stop``, "abort" exits at once."""

    def watch() -> None:
        while True:
            try:
                data = os.read(fd, 1)
            except OSError:
                data = b""
            if data == ABORT:
                log.warning("the supervisor asked twice: exiting now",
                            extra={"action": "relay_abort"})
                os._exit(EXIT_INTERRUPTED)
            if data == STOP:
                request_stop()
                continue
            if not data:
                log.warning("the supervising process is gone: draining",
                            extra={"action": "relay_orphaned"})
                request_stop()
                return

    thread = threading.Thread(target=watch, name="relay-supervisor-pipe", daemon=True)
    thread.start()
    return thread


class Supervisor:
    """Forks ``count`` children running ``child`` and waits for them (the parent's side)."""

    def __init__(self, count: int, child: Child) -> None:
        self.count = count
        self.child = child
        self.pipes: dict[int, tuple[int, int]] = {}  # pid -> (index, write end)
        self.signals = 0
        self.stopping = False

    def run(self) -> int:
        """Start every child, then wait; the exit code of the whole (module docstring)."""
        for index in range(self.count):
            self._fork(index)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("%d relay processes started (pids %s)", self.count,
                 ", ".join(map(str, self.pipes)),
                 extra={"action": "relay_supervisor_start", "processes": self.count,
                        "pids": list(self.pipes)})
        code = EXIT_OK
        while self.pipes:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            index, fd = self.pipes.pop(pid, (-1, -1))
            if fd >= 0:
                os.close(fd)
            exit_code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if exit_code != 0 and code == EXIT_OK:
                    code = exit_code if exit_code > 0 else EXIT_WORKER_DIED
                continue
            code = exit_code if exit_code > 0 else EXIT_WORKER_DIED
            how = (f"was killed by signal {-exit_code}" if exit_code < 0
                   else f"exited with {exit_code}")
            log.error("relay process %d (pid %d) %s; stopping the others and exiting with %d",
                      index, pid, how, code,
                      extra={"action": "relay_process_died", "pid": pid, "index": index,
                             "exit_code": code})
            self.stopping = True
            self._tell(STOP)
        log.info("relay processes stopped", extra={"action": "relay_supervisor_stop",
                                                   "exit_code": code})
        return code

    def _fork(self, index: int) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = EXIT_ERROR
            try:
                os.close(write_end)
                for _, other in self.pipes.values():
                    os.close(other)  # else a sibling's pipe never ends when the parent dies
                self.pipes.clear()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = self.child(index, read_end)
            except SystemExit as exc:  # a check that failed in the child (logged)
                code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
            except BaseException:
                log.exception("relay process %d crashed", index,
                              extra={"action": "relay_crash"})
            finally:
                tracing.shutdown()  # os._exit skips the SDK's exit hook: spans still queued
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(read_end)
        self.pipes[pid] = (index, write_end)

    def _tell(self, message: bytes) -> None:
        for _, fd in list(self.pipes.values()):
            with contextlib.suppress(OSError):  # that child is already gone
                os.write(fd, message)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        first = self.signals == 1
        log.info("signal %s: %s the relay processes", signal.Signals(signum).name,
                 "draining" if first else "aborting",
                 extra={"action": "relay_signal" if first else "relay_abort"})
        self._tell(STOP if first else ABORT)
