"""Start and stop the saga's processes (used by ``make demo`` and the saga tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVICES = ("relay", "inventory", "payment", "shipping", "order-api")
STACK_ENV = Path(__file__).resolve().parents[1] / ".stack" / "env"


def load_stack_env() -> bool:
    """Read ``.stack/env`` (written by ``make stack-up``) into ``os.environ``.

    Variables already set win, so a shell can point at other servers. False if there is
    no such file.
    """
    if not STACK_ENV.exists():
        return False
    for line in STACK_ENV.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            os.environ.setdefault(key.strip(), value.strip())
    return True


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SagaProcesses:
    """The relay and the four services, each in its own process."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    payment_args: list[str] = field(default_factory=list)
    # Names each consumer's static group membership, ``<service>-<tag>``: the same tag in
    # the next run (same topics) takes over at once what this run's stopped members still
    # hold; the default, this run's port, keeps runs apart.
    instance_tag: str | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, name: str) -> list[str]:
        port = self.metrics_ports.setdefault(name, free_port())
        base = [sys.executable, "-m", "services.cli", name, "--metrics-port", str(port)]
        if name == "order-api":
            return [*base, "--port", str(self.port)]
        if name == "payment":
            return [*base, *self.payment_args]
        return base

    def start(self, name: str) -> None:
        """Start one process (its output goes to ``log_dir/name.log``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        # One stable consumer instance id per service: restarted after a crash, it takes
        # its partitions back at once (static group membership).
        instance = {"OUTBOX_CONSUMER_INSTANCE_ID": f"{name}-{self.instance_tag or self.port}"}
        self.procs[name] = subprocess.Popen(
            self.command(name), env={**os.environ, **instance, **self.env}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

    def health_urls(self) -> dict[str, str]:
        """Every running process's ``/health`` (the order API's on its own port)."""
        urls = {name: f"http://127.0.0.1:{self.metrics_ports[name]}/health"
                for name in self.procs if name in self.metrics_ports}
        if "order-api" in self.procs:
            urls["order-api"] = self.api + "/health"
        return urls

    def start_all(self, timeout: float = 60.0) -> None:
        """Start everything and wait until every process says it is healthy."""
        for name in SERVICES:
            self.start(name)
        deadline = time.monotonic() + timeout
        waiting = self.health_urls()
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                       f"{self.log_dir / (name + '.log')}")
            for name, url in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url, timeout=1).status_code == 200:
                        del waiting[name]
            if not waiting:
                return
            time.sleep(0.3)
        raise RuntimeError(f"not healthy after {timeout:.0f}s: {', '.join(sorted(waiting))}")

    def consumer_metric(self, name: str) -> float:
        """A counter summed over the running consumers (e.g. duplicates skipped)."""
        total = 0.0
        for port in self.metrics_ports.values():
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                continue
            for line in text.splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self, name: str) -> None:
        """``kill -9`` one process."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM one process and wait for it; returns its exit code."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def stop_all(self) -> dict[str, int]:
        """Stop the API and the consumers first, the relay last."""
        return {name: self.stop(name) for name in reversed(SERVICES) if name in self.procs}
