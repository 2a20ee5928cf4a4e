"""The four systems bench/migration.py compares, as groups of processes on one database.

| variant | processes | how a step tells the next |
|---|---|---|
| ``legacy`` | create-order, process-inventory, -payment, -shipping | fire-and-forget fetch |
| ``dualwrite`` | create-order (HTTP), three plain Kafka consumers | commit, then produce |
| ``saga`` | relay, order API, inventory, payment, shipping | the outbox |
| ``strangler`` | create-order, relay, ``outbox forward``, the legacy steps | outbox, then fetch |

In ``strangler`` create-order publishes ``OrderCreated`` through the outbox and ``outbox
forward`` calls the legacy process-inventory, which still fetches the next steps: the
first edge of the cutover.

Every variant has the same victim for faults, the inventory step (its process is named
``inventory``), the same tables, stock and gateway simulation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.launcher import free_port
from services.legacy.faults import KILL_AFTER_ENV

VARIANTS = ("legacy", "dualwrite", "saga", "strangler")
VICTIM = "inventory"
PY = [sys.executable, "-m"]
_SCRIPT = Path(sys.executable).with_name("outbox")
OUTBOX = ([str(_SCRIPT)] if _SCRIPT.exists()
          else [sys.executable, "-c", "from outbox.cli import main; main()"])
GATEWAY_ARGS = ["--latency", "0.002"]


@dataclass
class Processes:
    """Named processes with logs, ``kill -9``, stop, and a supervisor that restarts any
    that exits on its own after ``restart_delay`` (like ``Restart=always``)."""

    env: dict[str, str]
    log_dir: Path
    commands: dict[str, list[str]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)  # per process
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restart_delay: float = 1.0
    restarts: dict[str, int] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # stopped on purpose: not restarted
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, name: str, extra_env: dict[str, str] | None = None) -> None:
        """Start ``name`` (its output appends to ``log_dir/name.log``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log, self._lock:
            self.procs[name] = subprocess.Popen(
                self.commands[name],
                env={**os.environ, **self.env, **self.envs.get(name, {}), **(extra_env or {})},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.held.discard(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of ``name``'s log."""
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def supervise(self) -> None:
        """Restart processes that die, in a daemon thread, until :meth:`stop_all`."""

        def loop() -> None:
            while not self._stop.wait(0.2):
                for name, proc in list(self.procs.items()):
                    if proc.poll() is not None and name not in self.held:
                        self._stop.wait(self.restart_delay)
                        if self._stop.is_set() or name in self.held:
                            return
                        self.restarts[name] = self.restarts.get(name, 0) + 1
                        self.start(name)  # without the fault hook

        threading.Thread(target=loop, name="supervisor", daemon=True).start()

    def stop(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM ``name`` and wait; it stays down until :meth:`start`."""
        with self._lock:
            self.held.add(name)
            proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)

    def stop_all(self) -> dict[str, int]:
        """Stop the supervisor, then every process (last started first)."""
        self._stop.set()
        return {name: self.stop(name) for name in reversed(list(self.procs))}


@dataclass
class Variant:
    """One system: its processes and where orders are placed."""

    name: str
    processes: Processes
    entry: str
    health: list[str]

    def start(self, kill_after: int | None = None, timeout: float = 90.0) -> None:
        """Start every process (the victim armed to die after ``kill_after`` steps) and
        wait until the HTTP services answer."""
        for name in self.processes.commands:
            armed = {KILL_AFTER_ENV: str(kill_after)} if name == VICTIM and kill_after else {}
            self.processes.start(name, armed)
        deadline = time.monotonic() + timeout
        pending = list(self.health)
        while pending:
            for name, proc in self.processes.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: {name} exited with {proc.returncode}; "
                                       f"see {self.processes.log_dir / (name + '.log')}")
            try:
                if httpx.get(pending[0], timeout=1).status_code == 200:
                    pending.pop(0)
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {pending[0]} not answering after {timeout}s")
            time.sleep(0.2)
        self.processes.supervise()


def _serve(*functions: str, port: int, calls: dict[str, int] | None = None,
           mode: str = "fetch") -> list[str]:
    argv = [*PY, "services.legacy.cli", "serve", *functions, "--port", str(port),
            "--mode", mode]
    for step, target in (calls or {}).items():
        argv += ["--call", f"{step}=http://127.0.0.1:{target}/functions/v1/{step}"]
    return argv


def build(name: str, env: dict[str, str], log_dir: Path, forward_config: Path) -> Variant:
    """The processes of variant ``name`` (not started). ``env`` points at the database,
    the broker and the run's topic template."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)}")
    ports = {step: free_port() for step in ("order", "inventory", "payment", "shipping")}
    steps = {"process-inventory": ports["inventory"], "process-payment": ports["payment"],
             "process-shipping": ports["shipping"]}
    url = "http://127.0.0.1:{}".format
    legacy_steps = {
        "inventory": _serve("process-inventory", port=ports["inventory"],
                            calls={"process-payment": ports["payment"]}),
        "payment": [*_serve("process-payment", port=ports["payment"],
                            calls={"process-shipping": ports["shipping"]}), *GATEWAY_ARGS],
        "shipping": _serve("process-shipping", port=ports["shipping"])}
    step_health = [url(ports[s]) + "/health" for s in ("inventory", "payment", "shipping")]
    order_health = url(ports["order"]) + "/health"
    create_order = url(ports["order"]) + "/functions/v1/create-order"
    procs = Processes(env=dict(env), log_dir=log_dir / name)
    if name == "legacy":
        procs.commands = {"create-order": _serve("create-order", "retry-failed-order",
                                                 port=ports["order"], calls=steps),
                          **legacy_steps}
        return Variant(name, procs, create_order, [order_health, *step_health])
    if name == "dualwrite":
        procs.commands = {
            "create-order": _serve("create-order", port=ports["order"], mode="kafka"),
            "inventory": [*PY, "services.legacy.cli", "consume", "process-inventory"],
            "payment": [*PY, "services.legacy.cli", "consume", "process-payment",
                        *GATEWAY_ARGS],
            "shipping": [*PY, "services.legacy.cli", "consume", "process-shipping"]}
        return Variant(name, procs, create_order, [order_health])
    if name == "saga":
        procs.commands = {
            "relay": [*PY, "services.cli", "relay"],
            "order-api": [*PY, "services.cli", "order-api", "--port", str(ports["order"])],
            "inventory": [*PY, "services.legacy.cli", "saga", "inventory"],
            "payment": [*PY, "services.legacy.cli", "saga", "payment", *GATEWAY_ARGS],
            "shipping": [*PY, "services.legacy.cli", "saga", "shipping"]}
        # Static membership, as the saga's launcher does: a restart takes its partitions
        # back at once instead of after the session timeout.
        procs.envs = {n: {"OUTBOX_CONSUMER_INSTANCE_ID": f"{n}-{ports['order']}"}
                      for n in procs.commands}
        return Variant(name, procs, url(ports["order"]) + "/orders", [order_health])
    forward_config.write_text(f"""
group = "inventory-forward"
[routes.process-inventory]
url = "{url(ports['inventory'])}/functions/v1/process-inventory"
topics = ["{env['OUTBOX_TOPIC_TEMPLATE'].replace('{aggregatetype}', 'order')}"]
event_types = ["OrderCreated"]
timeout = 5
max_attempts = 1000
backoff_cap = 2
body = {{ orderId = "${{payload.orderId}}", correlationId = "${{payload.correlationId}}" }}
""")
    procs.commands = {
        "create-order": _serve("create-order", port=ports["order"], mode="outbox"),
        "relay": [*OUTBOX, "relay", "run", "--schema", "orders", "--poll-interval", "0.2",
                  "--log-format", "text", "--log-level", "warning"],
        "forward": [*OUTBOX, "forward", "run", "--config", str(forward_config),
                    "--schema", "inventory", "--log-format", "text", "--log-level", "warning"],
        **legacy_steps}
    return Variant(name, procs, create_order, [order_health, *step_health])
