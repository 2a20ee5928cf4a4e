"""docker-compose.yml cannot run here (no Docker engine): check it agrees with the local stack."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_stack_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("devstack_stack", ROOT / "devstack" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def host_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def test_compose_has_the_stack_services_and_app_slots() -> None:
    services = compose()["services"]
    assert {"postgres", "kafka", "connect"} <= services.keys()
    for app in ("saga-setup", "relay", "order-api", "inventory", "payment", "shipping"):
        assert services[app]["profiles"] == ["app"], app


def test_compose_app_commands_exist_in_the_cli() -> None:
    """Every command the compose file runs is a real subcommand of the installed CLIs."""
    from click.testing import CliRunner

    from outbox.cli import main as outbox_main
    from services.cli import main as saga_main

    clis = {"outbox": outbox_main, "outbox-saga": saga_main}
    for name, service in compose()["services"].items():
        command = service.get("command")
        if not command or command[0] not in clis:
            continue
        result = CliRunner().invoke(clis[command[0]], [*command[1:2], "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_compose_ports_match_the_local_stack_defaults() -> None:
    stack = load_stack_module()
    services = compose()["services"]
    ports = stack.DEFAULT_PORTS  # the defaults, whatever this machine overrides
    assert host_ports(services["postgres"]) == {ports["pg"]}
    assert host_ports(services["kafka"]) == {ports["kafka"]}
    assert host_ports(services["connect"]) == {ports["connect"]}


def test_compose_postgres_has_logical_wal_and_the_stack_credentials() -> None:
    stack = load_stack_module()
    pg = compose()["services"]["postgres"]
    assert "wal_level=logical" in pg["command"]
    env = pg["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        stack.PG_USER, stack.PG_PASSWORD, stack.PG_DB)


def test_compose_kafka_is_kraft_and_advertises_the_stack_port() -> None:
    stack = load_stack_module()
    env = compose()["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert f"127.0.0.1:{stack.DEFAULT_PORTS['kafka']}" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_compose_connect_runs_the_pinned_debezium_version() -> None:
    pom = (ROOT / "devstack" / "pom.xml").read_text()
    image = compose()["services"]["connect"]["image"]
    version = image.rsplit(":", 1)[1]
    assert f"<debezium.version>{version}</debezium.version>" in pom
    kafka_image = compose()["services"]["kafka"]["image"]
    assert f"<kafka.version>{kafka_image.rsplit(':', 1)[1]}</kafka.version>" in pom


def test_compose_app_services_use_the_toolkit_env_names() -> None:
    services = compose()["services"]
    for app in ("relay", "order-api", "inventory", "payment", "shipping"):
        env = services[app]["environment"]
        assert {"OUTBOX_DATABASE_URL", "OUTBOX_KAFKA_BOOTSTRAP_SERVERS"} <= env.keys(), app
