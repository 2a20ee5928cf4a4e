"""Every CLI command, run as a user runs it, with each bad input that applies to it: ONE
line saying what is wrong and what to do, the documented exit code, no traceback, no raw
librdkafka lines, within a bounded time.

The commands come from walking the click tree (``outbox --help``); a command this file
does not describe fails the test, so a new command cannot skip it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import click
import psycopg
import pytest
from click.testing import CliRunner

from outbox.cli import main
from outbox.exit_codes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.harness import db
from tests.harness.stack import ROOT

OUTBOX_BIN = ROOT / ".venv" / "bin" / "outbox"
COMMAND = ([str(OUTBOX_BIN)] if OUTBOX_BIN.exists()
           else [sys.executable, "-c", "from outbox.cli import main; main()"])
BOUND = 40.0  # seconds: the start-up checks wait 10 s for a broker; the machine is shared


@dataclass(frozen=True)
class Spec:
    """How to reach a command's services, and which it uses (url: parses the database
    URL; db: connects to the database; kafka; connect: the Kafka Connect REST API)."""

    args: tuple[str, ...] = ()
    needs: frozenset[str] = field(default_factory=frozenset)
    daemon: bool = False  # logs JSON lines instead of printing one error line


def _needs(*names: str) -> frozenset[str]:
    return frozenset(names) | ({"url"} if "db" in names else set())


COMMANDS: dict[tuple[str, ...], Spec] = {
    ("capture", "add"): Spec(("orders", "--name", "c1", "--event-type", "OrderPlaced",
                              "--aggregate-type", "order", "--aggregate-id-column", "id"),
                             _needs("db")),
    ("capture", "list"): Spec(needs=_needs("db")),
    ("capture", "remove"): Spec(("c1",), _needs("db")),
    ("db", "upgrade"): Spec(needs=_needs("db")),
    ("db", "downgrade"): Spec(("--yes",), _needs("db")),
    ("db", "current"): Spec(needs=_needs("db")),
    ("db", "check"): Spec(needs=_needs("db")),
    ("db", "roles"): Spec(needs=_needs("db")),
    ("relay", "run"): Spec(("--startup-timeout", "10"), _needs("db", "kafka"), daemon=True),
    ("relay", "retry-failed"): Spec(needs=_needs("db")),
    ("relay", "install-notify"): Spec(needs=_needs("db")),
    ("status",): Spec(needs=_needs("db")),
    ("purge",): Spec(("--older-than", "1d"), _needs("db")),
    ("replay",): Spec(("--all", "--include-unpublished", "--yes"), _needs("db", "kafka")),
    ("dlq", "list"): Spec(("some-topic",), _needs("kafka")),
    ("dlq", "redrive"): Spec(("some-topic", "--all", "--yes"), _needs("kafka")),
    ("inbox", "purge"): Spec(("--older-than", "1d"), _needs("db")),
    ("forward", "run"): Spec(("--url", "http://127.0.0.1:9/hook", "--topic", "t-forward",
                              "--startup-timeout", "10"), _needs("db", "kafka"), daemon=True),
    ("forward", "check"): Spec(("--url", "http://127.0.0.1:9/hook", "--topic", "t-forward")),
    ("connect", "render"): Spec(needs=_needs("url")),
    ("connect", "validate"): Spec(needs=_needs("url", "connect")),
    ("connect", "apply"): Spec(needs=_needs("url", "connect")),
    ("connect", "status"): Spec(needs=_needs("url", "connect")),
    ("connect", "check"): Spec(needs=_needs("db")),
    ("connect", "pause"): Spec(needs=_needs("connect")),
    ("connect", "resume"): Spec(needs=_needs("connect")),
    ("connect", "restart"): Spec(needs=_needs("connect")),
    ("connect", "delete"): Spec(needs=_needs("connect")),
    # Serves /metrics about the database and Connect even while they are down (reporting
    # that is its job), so only what no restart can fix stops it.
    ("connect", "exporter"): Spec(("--port", "0"), _needs("url")),
    ("worker",): Spec(("tests.consumers.worker_app:cli_walk",), _needs("db", "kafka"),
                      daemon=True),
    # A catalogue needs no service: it only imports the app.
    ("events", "list"): Spec(("services.inventory:consumer",)),
    ("events", "asyncapi"): Spec(("services.inventory:consumer",)),
}


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command under ``outbox``, found by walking the click groups."""
    found: list[tuple[str, ...]] = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, f"{' '.join((*path, name))} does not load"
                walk(sub, (*path, name))
        else:
            found.append(path)

    walk(main, ())
    return found


def test_every_command_is_described_here_and_has_help() -> None:
    commands = leaf_commands()
    missing = [" ".join(c) for c in commands if c not in COMMANDS]
    assert not missing, f"describe these commands in COMMANDS (args and services): {missing}"
    assert not [c for c in COMMANDS if c not in commands], "COMMANDS names a gone command"
    for command in commands:
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "--log-level" in result.output, f"{command}: no --log-level"


def test_the_top_level_help_lists_each_command_as_click_would_without_importing_it() -> None:
    """outbox.cli.SUMMARIES: each command's own short help, at several widths; and ``outbox
    --help`` imports none of the commands' modules (they took 1.3 s)."""
    import importlib

    from outbox.cli import COMMANDS, SUMMARIES

    assert sorted(SUMMARIES) == sorted(COMMANDS)
    for name, target in COMMANDS.items():
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        for limit in (20, 45, 74, 10_000):
            assert (click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)
                    == command.get_short_help_str(limit)), f"SUMMARIES[{name!r}]: {limit}"
    modules = sorted({target.partition(":")[0] for target in COMMANDS.values()})
    probe = ("import sys; from outbox.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             f"print([m for m in {modules!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "Commands:" in out and "relay    The relay daemon" in out, out
    assert out.strip().splitlines()[-1] == "[]", out


@dataclass(frozen=True)
class Bad:
    """One bad input: what it changes, which service it concerns, what must happen."""

    env: dict[str, str]
    concerns: str  # a name from Spec.needs, or "all"
    code: int
    words: str  # in the error line
    args: tuple[str, ...] = ()
    # Batched: every command of the case in ONE helper process, each through CliRunner
    # (quicker, and sees every Python traceback; its own process, so no thread of another
    # test writes into the output). Otherwise a process per command, which also shows
    # what a C library writes straight to stderr (librdkafka's raw lines): the cases that
    # reach the broker, and one database case.
    batched: bool = True


def _port_in_use() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def base_env(pg_url: str, template_db: str, kafka_bootstrap: str,
             connect_url: str) -> Iterator[dict[str, str]]:
    """Good settings for every service: a database with the toolkit and one row."""
    name = db.clone_database(pg_url, template_db, prefix="t_cli")
    url = db.with_dbname(pg_url, name)
    with psycopg.connect(url) as conn:
        conn.execute("insert into outbox (id, aggregatetype, aggregateid, type, payload) "
                     "values (gen_random_uuid(), 'cli', 'a-1', 'Tested', '{}')")
    try:
        yield {"OUTBOX_DATABASE_URL": url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
               "OUTBOX_CONNECT_URL": connect_url}
    finally:
        db.drop_database(pg_url, name)


def _url(env: dict[str, str], old: str, new: str) -> dict[str, str]:
    assert old in env["OUTBOX_DATABASE_URL"]
    return {"OUTBOX_DATABASE_URL": env["OUTBOX_DATABASE_URL"].replace(old, new)}


def bad_inputs(env: dict[str, str]) -> dict[str, Bad]:
    url = env["OUTBOX_DATABASE_URL"]
    port = url.rsplit(":", 1)[1].split("/")[0]
    host = url.split("@", 1)[1].split(":")[0]
    return {
        "non-numeric port": Bad(_url(env, f":{port}/", ":abc/"), "url", EXIT_CONFIG,
                                "port 'abc' is not a number"),
        "keyword form": Bad({"OUTBOX_DATABASE_URL": f"host={host} port={port} password=x1"},
                            "url", EXIT_CONFIG, "is not a PostgreSQL URL"),
        "wrong password": Bad(_url(env, "outbox:outbox@", "outbox:wrong@"), "db", EXIT_CONFIG,
                              "password authentication failed"),
        "unknown host": Bad(_url(env, f"@{host}:", "@nohost.invalid:"), "db", EXIT_CONFIG,
                            "nohost.invalid"),
        "database down": Bad(_url(env, f":{port}/", ":1/"), "db", EXIT_UNAVAILABLE,
                             "did not answer", batched=False),
        "broker down": Bad({"OUTBOX_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "kafka",
                           EXIT_UNAVAILABLE, "Kafka 127.0.0.1:1 did not answer",
                           batched=False),
        "Connect down": Bad({"OUTBOX_CONNECT_URL": "http://127.0.0.1:1"}, "connect",
                            EXIT_UNAVAILABLE, "Kafka Connect at http://127.0.0.1:1 is not"),
        "OUTBOX_KAFKA_CONFIG not json": Bad({"OUTBOX_KAFKA_CONFIG": "not json"}, "all",
                                            EXIT_CONFIG, "invalid OUTBOX_KAFKA_CONFIG"),
        "--log-level bogus": Bad({}, "all", EXIT_USAGE, "'bogus' is not one of",
                                 ("--log-level", "bogus")),
        "--kafka-config without =": Bad({}, "all", EXIT_USAGE, "is not KEY=VALUE",
                                        ("--kafka-config", "sasl.password")),
    }


@dataclass
class Outcome:
    command: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    seconds: float


def invoke(command: tuple[str, ...], args: tuple[str, ...], env: dict[str, str]) -> Outcome:
    """One command through CliRunner, in this process."""
    started = time.monotonic()
    result = CliRunner().invoke(main, [*command, *args], env=env)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(command, result.exit_code, result.stdout,
                   result.stderr + (f"Traceback: {escaped!r}" if escaped else ""),
                   time.monotonic() - started)


def run_batch(runs: list[tuple[tuple[str, ...], tuple[str, ...]]],
              env: dict[str, str]) -> list[Outcome]:
    """:func:`invoke` for each (command, args), in one helper process (this module run as
    a script)."""
    done = subprocess.run([sys.executable, "-m", "tests.test_cli_errors"], cwd=ROOT,
                          input=json.dumps({"runs": runs, "env": env}), capture_output=True,
                          text=True, timeout=BOUND * len(runs) + 60)
    assert done.returncode == 0, done.stderr[-3000:]
    return [Outcome(tuple(o["command"]), o["code"], o["stdout"], o["stderr"], o["seconds"])
            for o in json.loads(done.stdout.splitlines()[-1])]


def run(command: tuple[str, ...], args: tuple[str, ...], env: dict[str, str]) -> Outcome:
    """One command as a real process."""
    started = time.monotonic()
    done = subprocess.run([*COMMAND, *command, *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=BOUND + 30,
                          stdin=subprocess.DEVNULL)
    return Outcome(command, done.returncode, done.stdout, done.stderr,
                   time.monotonic() - started)


def problems_of(outcome: Outcome, spec: Spec, code: int, words: str) -> list[str]:
    """What is wrong with how the command failed (empty: it failed as it should)."""
    name = " ".join(outcome.command)
    found = []
    text = outcome.stdout + outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    if "Traceback" in text:
        found.append(f"{name}: a traceback:\n{text[-1500:]}")
    if any(re.match(r"^%\d\|", line) for line in text.splitlines()):
        found.append(f"{name}: raw librdkafka lines on stderr")
    if outcome.code != code:
        found.append(f"{name}: exit {outcome.code}, expected {code}: {text[-600:]}")
    if outcome.seconds > BOUND:
        found.append(f"{name}: took {outcome.seconds:.0f}s")
    if spec.daemon and code != EXIT_USAGE:
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                found.append(f"{name}: a log line that is not JSON: {line[:200]}")
        errors = [r for r in records if r.get("level") in ("error", "critical")]
        if len(errors) != 1 or words not in str(errors[0].get("message")):
            found.append(f"{name}: expected one error line with {words!r}: {lines}")
    else:
        if len(lines) != 1 or not lines[0].startswith("Error: ") or words not in lines[0]:
            found.append(f"{name}: expected one 'Error: ...{words}...' line on stderr, got "
                         f"{lines[:5]}")
        if outcome.stdout.strip():
            found.append(f"{name}: printed on stdout before failing: {outcome.stdout[:300]}")
    return found


@pytest.mark.postgres
@pytest.mark.kafka
@pytest.mark.connect
@pytest.mark.parametrize("case", ["non-numeric port", "keyword form", "wrong password",
                                  "unknown host", "database down", "broker down",
                                  "Connect down", "OUTBOX_KAFKA_CONFIG not json",
                                  "--log-level bogus", "--kafka-config without ="])
def test_each_bad_input_is_one_line_and_its_exit_code_for_every_command(
        base_env: dict[str, str], case: str) -> None:
    bad = bad_inputs(base_env)[case]
    chosen = [(c, s) for c, s in COMMANDS.items() if bad.concerns == "all"
              or bad.concerns in s.needs]
    assert chosen, f"no command concerns {case!r}"
    env = {**base_env, **bad.env}
    if bad.batched:
        outcomes = run_batch([(c, (*s.args, *bad.args)) for c, s in chosen], env)
    else:
        with ThreadPoolExecutor(max_workers=6) as pool:
            outcomes = list(pool.map(lambda cs: run(cs[0], (*cs[1].args, *bad.args), env),
                                     chosen))
    problems = [p for (_, spec), outcome in zip(chosen, outcomes, strict=True)
                for p in problems_of(outcome, spec, bad.code, bad.words)]
    assert not problems, "\n".join(problems)


@pytest.mark.postgres
@pytest.mark.kafka
def test_commands_with_their_own_bad_inputs(base_env: dict[str, str]) -> None:
    """`db upgrade 9999`; `db downgrade base --sql` (works: a DBA's script); a metrics port
    already in use; `relay run --processes 0`; a duration that is not one."""
    upgrade = run(("db", "upgrade"), ("9999",), base_env)
    assert not problems_of(upgrade, Spec(), EXIT_USAGE, "'9999' is not a revision")
    script = run(("db", "downgrade"), ("base", "--sql"), base_env)
    assert script.code == EXIT_OK, script.stderr
    assert "DROP TABLE public.outbox" in script.stdout
    for port in _port_in_use():
        relay = run(("relay", "run"), ("--metrics-port", str(port)), base_env)
        assert not problems_of(relay, COMMANDS[("relay", "run")], EXIT_CONFIG,
                               f"cannot serve /metrics on 127.0.0.1:{port}")
    for processes in ("0", "257"):
        relay = run(("relay", "run"), ("--processes", processes), base_env)
        assert not problems_of(relay, COMMANDS[("relay", "run")], EXIT_CONFIG,
                               f"--processes must be between 1 and 256 (got {processes})")
    purge = run(("purge",), ("--older-than", "soon"), base_env)
    assert not problems_of(purge, Spec(), EXIT_USAGE, "'soon' is not a duration")


if __name__ == "__main__":  # run_batch's helper process
    request = json.loads(sys.stdin.read())
    found = [invoke(tuple(c), tuple(a), request["env"]) for c, a in request["runs"]]
    print(json.dumps([o.__dict__ for o in found]))
