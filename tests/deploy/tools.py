"""Prometheus's own tools for the deploy tests: promtool, and a real Prometheus server.

Both come from Debian's ``prometheus`` package (.ci/run installs it). A test that needs
them and finds none fails in CI and is skipped on a developer machine, like a service.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.launcher import free_port
from tests.harness.stack import service_missing

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "outbox.json"


def tool(name: str) -> str:
    """The path of ``name`` (promtool, prometheus), or fail (CI) / skip (developer)."""
    path = shutil.which(name)
    if path is None:
        service_missing(name, "not installed: apt-get install --no-install-recommends "
                              "prometheus (Debian's package; .ci/run installs it)")
        raise AssertionError("unreachable")
    return path


def rules() -> list[dict[str, Any]]:
    """Every rule of deploy/prometheus/rules, with its group's name under ``group``."""
    out = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += [{**rule, "group": group["name"]} for rule in group["rules"]]
    return out


def render_rules(directory: Path, for_duration: str) -> list[Path]:
    """Copies of the rule files with every alert's ``for:`` set to ``for_duration`` (a test
    cannot wait the minutes production wants)."""
    written = []
    for path in RULES:
        data = yaml.safe_load(path.read_text())
        for group in data["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["for"] = for_duration
        target = directory / path.name
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        written.append(target)
    return written


class Prometheus:
    """A Prometheus server on a free loopback port with its own data directory."""

    def __init__(self, directory: Path, scrape_configs: list[dict[str, Any]],
                 rule_files: list[Path], interval: str = "1s") -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval,
                             "scrape_timeout": interval},
                  "rule_files": [str(p) for p in rule_files],
                  "scrape_configs": scrape_configs}
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.console.templates=/dev/null", "--web.console.libraries=/dev/null"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout}s: "
                             f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (asserts that Prometheus accepted ``expr``)."""
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [
            {"value": data["result"]}]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def wait_for(self, what: str, check: Any, timeout: float = 90) -> Any:
        """Poll ``check()`` until it returns something truthy; fail saying ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
            time.sleep(0.5)
