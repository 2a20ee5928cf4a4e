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


RELAYS = ("relay-orders", "relay-inventory", "relay-payment", "relay-shipping")
APPS = ("saga-setup", *RELAYS, "order-api", "inventory", "payment", "shipping")
MONITORING = ("cdc-exporter", "prometheus", "grafana")
SAGA_CONSUMERS = ("order-api", "inventory", "payment", "shipping")


def test_compose_has_the_stack_services_and_app_slots() -> None:
    services = compose()["services"]
    assert {"postgres", "kafka", "connect"} <= services.keys()
    for app in APPS:
        assert services[app]["profiles"] == ["app"], app
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name


def test_compose_app_commands_exist_in_the_cli() -> None:
    """Every command the compose file runs is a real subcommand of the installed CLIs, and
    takes the options given (parsed by click, not run)."""
    import click

    from outbox.cli import main as outbox_main
    from services.cli import main as saga_main

    clis: dict[str, click.Command] = {"outbox": outbox_main, "outbox-saga": saga_main}
    checked = 0
    for name, service in compose()["services"].items():
        command = service.get("command")
        if not command or command[0] not in clis:
            continue
        cmd, args = clis[command[0]], list(command[1:])
        ctx = click.Context(cmd)
        while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
            sub = cmd.get_command(ctx, args[0])
            assert sub is not None, (name, args[0])
            cmd, args = sub, args[1:]
        cmd.make_context(command[0], args)  # raises on an unknown option
        checked += 1
    assert checked == len(APPS) + 1  # and the CDC exporter


def test_compose_monitoring_scrapes_every_toolkit_process_it_starts() -> None:
    """Prometheus's targets are the compose services serving /metrics, on their ports; its
    rule and Grafana's provisioning mounts exist in the repository."""
    services = compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
               for job in config["scrape_configs"]}
    served = {}
    for name, service in services.items():
        command = [str(c) for c in service.get("command", [])]
        for flag in ("--metrics-port", "--port"):
            if command[:1] in (["outbox"], ["outbox-saga"]) and flag in command:
                served[name] = f"{name}:{command[command.index(flag) + 1]}"
                break
    assert targets["outbox-relay"] == {served[r] for r in RELAYS}
    assert targets["outbox-consumer"] == {served[s] for s in SAGA_CONSUMERS}
    assert targets["outbox-cdc"] == {served["cdc-exporter"]}
    for name in (*RELAYS, *SAGA_CONSUMERS):
        assert "0.0.0.0" in services[name]["command"], name  # reachable from Prometheus
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), (name, source)
    datasource = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                                 / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


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
    for app in (*RELAYS, "order-api", "inventory", "payment", "shipping", "cdc-exporter"):
        env = services[app]["environment"]
        assert {"OUTBOX_DATABASE_URL", "OUTBOX_KAFKA_BOOTSTRAP_SERVERS"} <= env.keys(), app
