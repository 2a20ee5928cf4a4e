"""Worker threads of one saga process, supervised: a worker that stops on its own stops
the process.

A daemon with several workers (the relay process runs one relay per outbox; the order API
runs its consumer beside the HTTP server) must not go on half alive: its orchestrator
would see a running process and a 200 while events pile up. When a worker returns or
raises while nobody asked it to stop, the supervisor logs why, marks the process unhealthy,
calls the ``on_death`` hooks (the order API stops its HTTP server) and the process exits
with :data:`~outbox.exit_codes.EXIT_WORKER_DIED`; the orchestrator restarts it, with its
own backoff. Signals: the first SIGTERM/SIGINT stops every worker gracefully, a second one
exits at once (:data:`~outbox.exit_codes.EXIT_INTERRUPTED`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from outbox.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_WORKER_DIED

log = logging.getLogger("outbox.saga")

HealthCheck = Callable[[], tuple[bool, str]]


@dataclass
class Worker:
    """One supervised thread."""

    name: str
    stop: Callable[[], None]
    health: HealthCheck | None = None
    thread: threading.Thread | None = None
    code: int | None = None  # its exit code, once it ended
    reason: str = field(default="running")


class Supervisor:
    """Starts workers, watches them, stops the process when one dies."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self.dead: Worker | None = None
        self.on_death: list[Callable[[], None]] = []
        self._signals = 0

    def start(self, name: str, run: Callable[[], int | None], stop: Callable[[], None],
              health: HealthCheck | None = None) -> Worker:
        """Run ``run`` in thread ``name``; ``stop`` asks it to return, ``health`` reports."""
        worker = Worker(name, stop, health)
        worker.thread = threading.Thread(target=self._watch, args=(worker, run), name=name,
                                         daemon=True)
        self.workers.append(worker)
        worker.thread.start()
        return worker

    def _watch(self, worker: Worker, run: Callable[[], int | None]) -> None:
        code = EXIT_ERROR
        try:
            code = run() or EXIT_OK
        except Exception:
            log.exception("worker %s crashed", worker.name,
                          extra={"action": "worker_crashed", "worker": worker.name})
        finally:
            worker.code = code
            worker.reason = f"stopped (exit code {code})"
            if not self.stopping.is_set():
                self.dead = self.dead or worker
                log.error("worker %s stopped on its own (exit code %d): stopping the process "
                          "(exit code %d)", worker.name, code, EXIT_WORKER_DIED,
                          extra={"action": "worker_died", "worker": worker.name,
                                 "exit_code": code})
                self.stopping.set()
                for hook in self.on_death:
                    hook()
            self._wake.set()

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy while every worker is alive and says it is healthy."""
        workers: dict[str, object] = {}
        ok = bool(self.workers)
        for worker in self.workers:
            alive = worker.thread is not None and worker.thread.is_alive()
            healthy, reason = (worker.health() if alive and worker.health is not None
                               else (alive, "running" if alive else worker.reason))
            ok = ok and alive and healthy
            workers[worker.name] = {"alive": alive, "healthy": healthy, "reason": reason}
        if self.dead is not None:
            reason = f"worker {self.dead.name} died"
        elif self.stopping.is_set():
            reason = "stopping"
        else:
            reason = "running" if ok else "a worker is unhealthy"
        return ok and not self.stopping.is_set(), {
            "status": "ok" if ok and not self.stopping.is_set() else "unhealthy",
            "reason": reason, "workers": workers}

    def check(self) -> tuple[bool, str]:
        """(healthy, one line): the first unhealthy worker and why."""
        ok, info = self.health()
        if ok:
            return True, "running"
        workers = info["workers"]
        assert isinstance(workers, dict)
        for name, state in workers.items():
            if not state["healthy"]:
                return False, f"{info['reason']}: {name}: {state['reason']}"
        return False, str(info["reason"])

    def request_stop(self) -> None:
        """Stop every worker gracefully (what the first signal does)."""
        self.stopping.set()
        self._wake.set()

    def install_signal_handlers(self, also: Callable[[], None] | None = None) -> None:
        """First SIGTERM/SIGINT: :meth:`request_stop` (and ``also``); a second: exit now."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second signal: exiting now", extra={"action": "saga_kill"})
                os._exit(EXIT_INTERRUPTED)
            log.info("signal %d: stopping", signum, extra={"action": "saga_stopping"})
            self.request_stop()
            if also is not None:
                also()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def wait(self) -> None:
        """Block until a stop is requested or a worker dies."""
        while not self.stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()

    def stop(self, timeout: float = 30.0) -> int:
        """Stop and join every worker; returns the process exit code."""
        self.stopping.set()
        for worker in self.workers:
            worker.stop()
        for worker in self.workers:
            if worker.thread is not None:
                worker.thread.join(timeout)
        if self.dead is not None:
            return EXIT_WORKER_DIED
        codes = [w.code for w in self.workers]
        if any(code is None for code in codes):
            return EXIT_ERROR  # a worker did not stop within the timeout
        return max((c for c in codes if c is not None), default=EXIT_OK)
