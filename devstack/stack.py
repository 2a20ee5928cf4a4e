#!/usr/bin/env python3
"""The local development stack, without Docker: PostgreSQL, Kafka (KRaft) and Kafka Connect.

    python devstack/stack.py up [postgres|kafka|connect ...]
    python devstack/stack.py down [postgres|kafka|connect ...]
    python devstack/stack.py status

PostgreSQL comes from Debian's packages (installed when missing), runs as an unprivileged
user in a project-local data directory and never touches a system cluster. Kafka and
Connect run on the JDK from jars that Maven resolves with ``devstack/pom.xml``.
Everything lives under ``.stack/`` (override with ``OUTBOX_STACK_DIR``); the connection
settings are written to ``.stack/env`` for the tests, the CLI and a shell.

Standard library only, so it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = ROOT / "devstack"
STACK = Path(os.environ.get("OUTBOX_STACK_DIR", ROOT / ".stack")).resolve()
POM = DEVSTACK / "pom.xml"

DEFAULT_PORTS = {"pg": 55432, "kafka": 59092, "controller": 59093, "connect": 58083}
PG_PORT = int(os.environ.get("OUTBOX_STACK_PG_PORT", DEFAULT_PORTS["pg"]))
KAFKA_PORT = int(os.environ.get("OUTBOX_STACK_KAFKA_PORT", DEFAULT_PORTS["kafka"]))
CONTROLLER_PORT = int(os.environ.get("OUTBOX_STACK_CONTROLLER_PORT",
                                     DEFAULT_PORTS["controller"]))
CONNECT_PORT = int(os.environ.get("OUTBOX_STACK_CONNECT_PORT", DEFAULT_PORTS["connect"]))
HOST = "127.0.0.1"

PG_USER = "outbox"
PG_PASSWORD = "outbox"  # noqa: S105 - dev-only; the cluster listens on loopback only
PG_DB = "outbox"
PG_OS_USER_FALLBACK = "outbox-dev"

KAFKA_HEAP = os.environ.get("OUTBOX_STACK_KAFKA_HEAP", "768m")
CONNECT_HEAP = os.environ.get("OUTBOX_STACK_CONNECT_HEAP", "768m")

SERVICES = ("postgres", "kafka", "connect")


def fast_mode() -> bool:
    """``OUTBOX_STACK_FAST=1``: PostgreSQL without fsync and synchronous commits, for the
    edit-test loop. A crash of the server (or of the machine) can then lose commits."""
    return os.environ.get("OUTBOX_STACK_FAST", "").lower() in ("1", "true", "yes", "on")


# What `status` says of a service: FOREIGN is a port that answers from a process this
# stack did not start.
HEALTHY, DOWN, FOREIGN = "healthy", "DOWN", "FOREIGN"


class StackError(Exception):
    """A service could not be installed, started or reached."""


def say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(what: str, check: Callable[[], bool], timeout: float, log: Path,
               alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise StackError(f"{what} exited during start-up. Last lines of {log}:\n{tail(log)}")
        time.sleep(0.5)
    raise StackError(f"{what} not ready after {timeout:.0f}s. Last lines of {log}:\n{tail(log)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child) still answers kill(0).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_pid(name: str, pidfile: Path, timeout: float = 30.0) -> None:
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    say(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        say(f"{name} did not stop in {timeout:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------- port owners
# A server answering on our port is only ours if it is the process in our pidfile: a worker
# left over from another clone's killed run answers just as well, with another config and
# plugin path, and adopting it fails every test that relies on it much later.


def _proc_address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host byte order."""
    raw = bytes.fromhex(hexaddr)
    words = (raw[i:i + 4] for i in range(0, len(raw), 4))
    ordered = b"".join(w[::-1] if sys.byteorder == "little" else w for w in words)
    return ipaddress.ip_address(ordered)


def _accepts_loopback(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    loopback = ipaddress.IPv4Address(HOST)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped == loopback
    return addr.is_unspecified or addr == loopback


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on ``port`` where a connection to ``HOST`` lands."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            addr, _, hexport = local.partition(":")
            if state == "0A" and int(hexport, 16) == port and _accepts_loopback(
                    _proc_address(addr)):
                inodes.add(inode)
    return inodes


def listener_pids(port: int) -> set[int]:
    """The processes listening on ``port`` (empty when this user cannot see them)."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    pids: set[int] = set()
    if sockets:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fds = list((proc / "fd").iterdir())
            except OSError:  # another user's process, or gone
                continue
            for fd in fds:
                try:
                    if os.readlink(fd) in sockets:
                        pids.add(int(proc.name))
                        break
                except OSError:
                    continue
    if not pids and shutil.which("ss"):
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True).stdout
        for part in out.replace(",", " ").split():
            if part.startswith("pid="):
                pids.add(int(part[4:]))
    return pids


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def describe_pid(pid: int) -> str:
    """``pid 123 (java, cwd /other/.stack)``: enough to tell which clone started it."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return f"pid {pid}"
    try:
        return f"pid {pid} ({name}, cwd {os.readlink(f'/proc/{pid}/cwd')})"
    except OSError:
        return f"pid {pid} ({name})"


def foreign_listener(service: str, port: int, owner: int | None, pidfile: Path,
                     started_with: Path, variable: str) -> str | None:
    """Why ``port`` answers but not from this stack's ``service``, in one line; None when
    the port is free or held by ``owner`` (the pid in ``pidfile``, alive, and started with
    ``started_with`` as an argument: not a recycled pid) or one of its children."""
    if not port_open(port):
        return None
    listeners = listener_pids(port)
    ours = owner is not None and pid_alive(owner) and str(started_with) in _argv(owner)
    if ours and owner is not None and all(_descends_from(p, owner) for p in listeners):
        return None  # an empty set: nobody visible holds it but our live process
    if listeners:
        who = ", ".join(describe_pid(p) for p in sorted(listeners))
    else:
        who = f"a process this user cannot see (`ss -ltnp 'sport = :{port}'` as root names it)"
    if owner is None or not pid_alive(owner):
        mine = f"{pidfile} names no live process"
    elif not ours:
        mine = f"{pidfile} names pid {owner}, which was not started with {started_with}"
    else:
        mine = f"this stack's {service} is pid {owner}"
    return (f"port {port} answers, but not from this stack's {service}: {who} listens there "
            f"and {mine}; stop that process, or choose other ports with {variable} (and the "
            "other OUTBOX_STACK_*_PORT variables)")


# --------------------------------------------------------------------------- jars


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:16]


def ensure_jars(profile: str, dest: Path, extra: list[str] | None = None) -> None:
    """Copy the jars of a pom profile into ``dest`` once per pom version (cached)."""
    marker = dest / f".complete-{_pom_digest()}"
    if marker.exists():
        return
    if shutil.which("mvn") is None:
        raise StackError("mvn not found: install Maven (apt-get install maven) and retry")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    say(f"resolving {profile} jars with Maven into {dest.relative_to(STACK)}")
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "-P", profile, "dependency:copy-dependencies",
           f"-DoutputDirectory={dest}", "-DincludeScope=runtime", *(extra or [])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"Maven failed for profile {profile}:\n{result.stdout[-3000:]}"
                         f"{result.stderr[-3000:]}")
    marker.touch()


def kafka_lib() -> Path:
    return STACK / "lib" / "kafka"


def plugin_path() -> Path:
    return STACK / "plugins"


def java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise StackError("java not found: install a JDK 17 or later (apt-get install "
                         "openjdk-17-jre-headless)")
    return found


def java_cmd(heap: str, log_name: str, main: str, *args: str) -> list[str]:
    return [
        java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={DEVSTACK / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={STACK / 'logs'}",
        "-cp", f"{kafka_lib()}/*", main, *args,
    ]


def spawn(name: str, cmd: list[str], log: Path, pidfile: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=STACK)
    pidfile.write_text(str(proc.pid))
    return proc


# --------------------------------------------------------------------------- postgres


@dataclass
class Postgres:
    port: int = PG_PORT

    @property
    def home(self) -> Path:
        return STACK / "postgres"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return STACK / "logs" / "postgres.log"

    def bindir(self) -> Path:
        base = Path("/usr/lib/postgresql")
        versions = sorted((p for p in base.glob("*/bin/postgres")),
                          key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                          else 0)
        if versions:
            return versions[-1].parent
        self.install()
        return self.bindir()

    def install(self) -> None:
        if os.geteuid() != 0:
            raise StackError("PostgreSQL server binaries not found under /usr/lib/postgresql: "
                             "run `sudo apt-get install postgresql` and retry")
        say("installing PostgreSQL from Debian's packages (no system cluster is created)")
        conf = Path("/etc/postgresql-common/createcluster.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        if not conf.exists():
            conf.write_text("create_main_cluster = false\n")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "-o", "Dpkg::Options::=--force-confold",
                     "postgresql", "postgresql-contrib"]):
            if subprocess.run(cmd, env=env).returncode != 0:
                raise StackError(f"`{' '.join(cmd)}` failed")

    def os_user(self) -> str | None:
        """The unprivileged account that runs the server, or None if we are not root."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", PG_OS_USER_FALLBACK):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_OS_USER_FALLBACK], check=True)
        return PG_OS_USER_FALLBACK

    def run_as(self, cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        user = self.os_user()
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        result: subprocess.CompletedProcess[str] = subprocess.run(
            cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        return result

    def psql(self, sql: str, db: str = PG_DB) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD, "PGCONNECT_TIMEOUT": "2"}
        psql = shutil.which("psql") or str(self.bindir() / "psql")
        return subprocess.run([psql, "-h", HOST, "-p", str(self.port), "-U", PG_USER, "-d", db,
                               "-v", "ON_ERROR_STOP=1", "-tAc", sql],
                              capture_output=True, text=True, env=env)

    def ready(self, db: str = PG_DB) -> bool:
        r = self.psql("select 1", db=db)
        return r.returncode == 0 and r.stdout.strip() == "1"

    def ensure_database(self) -> None:
        exists = self.psql(f"select 1 from pg_database where datname = '{PG_DB}'", db="postgres")
        if exists.stdout.strip() != "1":
            r = self.psql(f'create database "{PG_DB}"', db="postgres")
            if r.returncode != 0:
                raise StackError(f"could not create database {PG_DB}: {r.stderr.strip()}")

    def running_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().splitlines()[0]) if pidfile.exists() else None
        except (OSError, ValueError, IndexError):
            return None

    def _prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (STACK / "logs").mkdir(parents=True, exist_ok=True)
        user = self.os_user()
        if user is None:
            return
        # The unprivileged server must reach its data directory through every parent.
        probe = self.run_as(["test", "-x", str(self.home)])
        if probe.returncode != 0:
            raise StackError(
                f"the unprivileged user {user!r} cannot reach {self.home}: a parent directory "
                "is not traversable. Set OUTBOX_STACK_DIR to a path under /tmp or /var/tmp.")
        self.log.touch()
        for path in (self.home, self.log):
            shutil.chown(path, user=user)

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        say(f"initialising a PostgreSQL cluster in {self.data}")
        pwfile = self.home / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        user = self.os_user()
        if user is not None:
            shutil.chown(pwfile, user=user)
        r = self.run_as([str(self.bindir() / "initdb"), "-D", str(self.data), "-U", PG_USER,
                         f"--pwfile={pwfile}", "--auth-local=trust",
                         "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise StackError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'outbox-stack.conf'\n")
        with (self.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 scram-sha-256\n")

    def write_conf(self) -> None:
        durable = "off" if fast_mode() else "on"
        conf = f"""# written by devstack/stack.py at every start
listen_addresses = '{HOST}'
port = {self.port}
unix_socket_directories = '{self.home}'
max_connections = 300
shared_buffers = 256MB
# Debezium needs logical decoding, a slot per connector and a WAL sender per slot.
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
# Durable commits by default: the outbox guarantee is only as durable as the commit that
# wrote the event (an event answered 202 must survive a PostgreSQL crash). The edit-test
# loop may trade that for speed with OUTBOX_STACK_FAST=1 (docs/development.md).
fsync = {durable}
synchronous_commit = {durable}
full_page_writes = {durable}
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
"""
        target = self.data / "outbox-stack.conf"
        target.write_text(conf)
        user = self.os_user()
        if user is not None:
            shutil.chown(target, user=user)

    def durability(self) -> str:
        """What the running server does at commit: ``durable`` or ``FAST (...)``."""
        r = self.psql("select string_agg(name || '=' || setting, ', ' order by name) "
                      "from pg_settings where name in ('fsync', 'synchronous_commit', "
                      "'full_page_writes')", db="postgres")
        settings = r.stdout.strip()
        if r.returncode != 0 or not settings:
            return "durability unknown"
        return "durable" if settings.count("=on") == 3 else f"FAST, not durable ({settings})"

    def foreign(self) -> str | None:
        """Why the port answers but not from this stack's server (None: free or ours)."""
        return foreign_listener("postgres", self.port, self.running_pid(),
                                self.data / "postmaster.pid", self.data, "OUTBOX_STACK_PG_PORT")

    def up(self) -> None:
        foreign = self.foreign()
        if foreign is not None:
            raise StackError(foreign)
        if self.ready():
            running = self.durability()
            say(f"postgres already running on {HOST}:{self.port} ({running})")
            if (running == "durable") == fast_mode():
                say("  (it keeps its mode until restarted: make stack-down, then "
                    f"{'OUTBOX_STACK_FAST=1 ' if fast_mode() else ''}make stack-up)")
            return
        if self.ready("postgres"):  # our server is up but the database is missing
            self.ensure_database()
            return
        self._prepare_home()
        self.init()
        self.write_conf()
        r = self.run_as([str(self.bindir() / "pg_ctl"), "-D", str(self.data), "-l",
                         str(self.log), "-w", "-t", "60", "start"])
        if r.returncode != 0:
            raise StackError(f"pg_ctl start failed:\n{r.stdout}{r.stderr}\n"
                             f"Last lines of {self.log}:\n{tail(self.log)}")
        wait_until("postgres", lambda: self.ready("postgres"), 30, self.log)
        self.ensure_database()
        say(f"postgres ready on {HOST}:{self.port} ({self.durability()})")

    def down(self) -> None:
        if self.running_pid() is None:
            return
        say("stopping postgres")
        self.run_as([str(self.bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                     "stop"])

    def status(self) -> tuple[str, str]:
        foreign = self.foreign()
        if foreign is not None:
            return FOREIGN, foreign
        ok = self.ready()
        detail = f"pid {self.running_pid()}, {HOST}:{self.port}, wal_level=logical"
        return (HEALTHY if ok else DOWN), detail + (f", {self.durability()}" if ok else "")


# --------------------------------------------------------------------------- kafka


def kafka_uuid() -> str:
    """A Kafka cluster id. Like Kafka's own Uuid.randomUuid(), never one that starts with
    '-': kafka-storage would read it as an option (1 start in 64 failed that way)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def kafka_metadata_ok(port: int) -> bool:
    """Ask the broker for metadata with the Kafka protocol itself (ApiVersions + Metadata)."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            # Metadata request v4 (the oldest Kafka 4 still serves): all topics (null
            # array), no auto-creation, client id "stack".
            client = b"stack"
            body = (
                (3).to_bytes(2, "big") + (4).to_bytes(2, "big") + (7).to_bytes(4, "big")
                + len(client).to_bytes(2, "big") + client
                + (-1).to_bytes(4, "big", signed=True) + b"\x00"
            )
            s.sendall(len(body).to_bytes(4, "big") + body)
            size = int.from_bytes(_recv(s, 4), "big")
            reply = _recv(s, size)
            # correlation id, throttle time, then the broker array: one broker at least.
            return int.from_bytes(reply[:4], "big") == 7 and int.from_bytes(reply[8:12], "big") >= 1
    except OSError:
        return False


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


@dataclass
class Kafka:
    """A single KRaft node (broker + controller). Tests may run extra ones on other ports."""

    port: int = KAFKA_PORT
    controller_port: int = CONTROLLER_PORT
    name: str = "kafka"

    @property
    def home(self) -> Path:
        return STACK / self.name

    @property
    def log(self) -> Path:
        return STACK / "logs" / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return STACK / "run" / f"{self.name}.pid"

    def properties(self) -> str:
        return f"""# written by devstack/stack.py at every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{self.controller_port}
listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{self.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={self.home / 'data'}
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
log.segment.bytes=67108864
message.max.bytes=1048588
"""

    def ready(self) -> bool:
        return kafka_metadata_ok(self.port)

    def foreign(self) -> str | None:
        """Why a port answers but not from this stack's broker (None: free or ours)."""
        owner = read_pid(self.pidfile)
        props = self.home / "server.properties"
        for port, variable in ((self.port, "OUTBOX_STACK_KAFKA_PORT"),
                               (self.controller_port, "OUTBOX_STACK_CONTROLLER_PORT")):
            foreign = foreign_listener(self.name, port, owner, self.pidfile, props, variable)
            if foreign is not None:
                return foreign
        return None

    def up(self) -> None:
        foreign = self.foreign()
        if foreign is not None:
            raise StackError(foreign)
        if self.ready():
            say(f"{self.name} already running on {HOST}:{self.port}")
            return
        if read_pid(self.pidfile) is None:
            ensure_jars("kafka", kafka_lib())
            self.home.mkdir(parents=True, exist_ok=True)
            props = self.home / "server.properties"
            props.write_text(self.properties())
            if not (self.home / "data" / "meta.properties").exists():
                say(f"formatting {self.name} storage")
                r = subprocess.run(java_cmd("256m", self.name, "kafka.tools.StorageTool",
                                            "format", "-t", kafka_uuid(), "-c", str(props)),
                                   capture_output=True, text=True, cwd=STACK)
                if r.returncode != 0:
                    raise StackError(f"kafka storage format failed:\n{r.stdout}{r.stderr}")
            spawn(self.name, java_cmd(KAFKA_HEAP, self.name, "kafka.Kafka", str(props)),
                  self.log, self.pidfile)
        wait_until(self.name, self.ready, 90, self.log,
                   alive=lambda: read_pid(self.pidfile) is not None)
        say(f"{self.name} ready on {HOST}:{self.port}")

    def down(self) -> None:
        stop_pid(self.name, self.pidfile)

    def status(self) -> tuple[str, str]:
        foreign = self.foreign()
        if foreign is not None:
            return FOREIGN, foreign
        return ((HEALTHY if self.ready() else DOWN),
                f"pid {read_pid(self.pidfile)}, {HOST}:{self.port} (KRaft)")


# --------------------------------------------------------------------------- connect

POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
EVENT_ROUTER = "io.debezium.transforms.outbox.EventRouter"


@dataclass
class Connect:
    """A distributed Connect worker. Tests may run private ones under another ``name``
    (their own group and storage topics)."""

    port: int = CONNECT_PORT
    kafka_port: int = KAFKA_PORT
    name: str = "connect"

    @property
    def home(self) -> Path:
        return STACK / self.name

    @property
    def log(self) -> Path:
        return STACK / "logs" / f"{self.name}.log"

    @property
    def pidfile(self) -> Path:
        return STACK / "run" / f"{self.name}.pid"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def properties(self) -> str:
        return f"""# written by devstack/stack.py at every start
bootstrap.servers={HOST}:{self.kafka_port}
group.id=outbox-{self.name}
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
config.storage.topic=_{self.name}-configs
offset.storage.topic=_{self.name}-offsets
status.storage.topic=_{self.name}-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.flush.interval.ms=1000
listeners=http://{HOST}:{self.port}
rest.advertised.host.name={HOST}
rest.advertised.port={self.port}
plugin.path={plugin_path()}
# Secrets are referenced as ${{env:NAME}} or ${{file:/path:key}}, never inlined.
config.providers=env,file
config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
connector.client.config.override.policy=All
"""

    def _get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=3) as resp:  # noqa: S310
            return json.loads(resp.read())

    def plugins(self) -> list[str]:
        try:
            data = self._get("/connector-plugins?connectorsOnly=false")
        except (OSError, urllib.error.URLError, ValueError):
            return []
        return [p["class"] for p in data] if isinstance(data, list) else []

    def ready(self) -> bool:
        plugins = self.plugins()
        return POSTGRES_CONNECTOR in plugins and EVENT_ROUTER in plugins

    def foreign(self) -> str | None:
        """Why the port answers but not from this stack's worker (None: free or ours)."""
        return foreign_listener(self.name, self.port, read_pid(self.pidfile), self.pidfile,
                                self.home / "connect-distributed.properties",
                                "OUTBOX_STACK_CONNECT_PORT")

    def up(self) -> None:
        foreign = self.foreign()
        if foreign is not None:
            raise StackError(foreign)
        if self.ready():
            say(f"{self.name} already running on {self.url}")
            return
        if read_pid(self.pidfile) is None:
            ensure_jars("kafka", kafka_lib())
            ensure_jars("debezium", plugin_path() / "debezium-postgres")
            self.home.mkdir(parents=True, exist_ok=True)
            props = self.home / "connect-distributed.properties"
            props.write_text(self.properties())
            # Connectors reference the password as ${env:...}; the worker's env holds it.
            env_pg_password = {"OUTBOX_STACK_PG_PASSWORD": PG_PASSWORD,
                               "OUTBOX_DATABASE_PASSWORD": PG_PASSWORD}
            os.environ.update(env_pg_password)
            spawn(self.name, java_cmd(CONNECT_HEAP, self.name,
                                      "org.apache.kafka.connect.cli.ConnectDistributed",
                                      str(props)), self.log, self.pidfile)
        wait_until(self.name, self.ready, 180, self.log,
                   alive=lambda: read_pid(self.pidfile) is not None)
        say(f"{self.name} ready on {self.url} (Debezium PostgresConnector and EventRouter "
            "loaded)")

    def down(self) -> None:
        stop_pid(self.name, self.pidfile)

    def status(self) -> tuple[str, str]:
        foreign = self.foreign()
        if foreign is not None:
            return FOREIGN, foreign
        plugins = self.plugins()
        ok = POSTGRES_CONNECTOR in plugins and EVENT_ROUTER in plugins
        return ((HEALTHY if ok else DOWN),
                f"pid {read_pid(self.pidfile)}, {self.url}, {len(plugins)} plugins")


# --------------------------------------------------------------------------- the stack


def env_file() -> Path:
    return STACK / "env"


def write_env() -> None:
    lines = {
        "OUTBOX_DATABASE_URL": f"postgresql://{PG_USER}:{PG_PASSWORD}@{HOST}:{PG_PORT}/{PG_DB}",
        "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": f"{HOST}:{KAFKA_PORT}",
        "OUTBOX_CONNECT_URL": f"http://{HOST}:{CONNECT_PORT}",
        # How Kafka Connect (a separate process) reaches the same database.
        "OUTBOX_STACK_PG_HOST": HOST,
        "OUTBOX_STACK_PG_PORT": str(PG_PORT),
        "OUTBOX_STACK_PG_USER": PG_USER,
        "OUTBOX_STACK_PG_PASSWORD": PG_PASSWORD,
        "OUTBOX_STACK_PG_DB": PG_DB,
        "OUTBOX_STACK_DIR": str(STACK),
    }
    env_file().write_text("".join(f"{k}={v}\n" for k, v in lines.items()))


def services() -> dict[str, Postgres | Kafka | Connect]:
    return {"postgres": Postgres(), "kafka": Kafka(), "connect": Connect()}


def cmd_up(names: list[str]) -> int:
    STACK.mkdir(parents=True, exist_ok=True)
    (STACK / ".gitignore").write_text("*\n")
    started = time.monotonic()
    all_services = services()
    for name in names:
        try:
            all_services[name].up()
        except StackError as exc:
            print(f"[stack] {name} failed to start: {exc}", file=sys.stderr)
            return 1
    write_env()
    say(f"up in {time.monotonic() - started:.1f}s; settings in {env_file()}")
    return 0


def cmd_down(names: list[str]) -> int:
    all_services = services()
    for name in reversed(names):
        all_services[name].down()
    return 0


def cmd_status() -> int:
    healthy = True
    for name, svc in services().items():
        state, detail = svc.status()
        healthy &= state == HEALTHY
        print(f"{name:<9} {state:<8} {detail}")
    if env_file().exists():
        print(f"settings: {env_file()}  (source it: set -a; . {env_file()}; set +a)")
    return 0 if healthy else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status"):
        print(__doc__)
        return 2
    names = argv[1:] or list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        print(f"unknown service {unknown[0]!r}; choose from {', '.join(SERVICES)}",
              file=sys.stderr)
        return 2
    if argv[0] == "up":
        return cmd_up(names)
    if argv[0] == "down":
        return cmd_down(names)
    return cmd_status()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
