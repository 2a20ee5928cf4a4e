"""A small client for the Kafka Connect REST API, with errors a person can act on."""

from __future__ import annotations

import time
from typing import Any

import httpx

from outbox.errors import ConfigurationError, OutboxError, ServiceUnavailableError
from outbox.settings import redact_url, scrub_secrets, url_secrets


class ConnectError(OutboxError):
    """Kafka Connect refused a request or could not be reached."""


class ConnectUnavailableError(ConnectError, ServiceUnavailableError):
    """Kafka Connect did not answer."""


class ConnectAuthError(ConnectError, ConfigurationError):
    """Kafka Connect refused the credentials (401) or the request (403)."""


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text


def _rebalancing(response: httpx.Response) -> bool:
    """Connect refuses requests while its workers rebalance: 409 "rebalance is in
    progress", or 500 "a rebalance is expected". Both pass within seconds."""
    return (response.status_code == 409 or (
        response.status_code == 500 and "rebalance" in _message(response).lower()))


class ConnectClient:
    """The Connect worker at ``url`` (e.g. http://localhost:8083). A request refused because
    the workers are rebalancing is retried for up to ``rebalance_wait`` seconds."""

    def __init__(self, url: str, timeout: float = 30.0, rebalance_wait: float = 30.0) -> None:
        self.url = url.rstrip("/")
        # What errors show: the URL without its user:password@ (basic auth), which is
        # masked in whatever else an error quotes too.
        self.shown_url = redact_url(self.url)
        self._secrets = url_secrets(self.url)
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        self.rebalance_wait = rebalance_wait

    def _clean(self, text: str) -> str:
        return scrub_secrets(redact_url(text), self._secrets)

    def _call(self, method: str, path: str, json: Any = None,
              ok_missing: bool = False) -> Any:
        deadline = time.monotonic() + self.rebalance_wait
        delay = 0.2
        while True:
            try:
                response = self.http.request(method, path, json=json)
            except httpx.HTTPError as exc:
                raise ConnectUnavailableError(self._clean(
                    f"Kafka Connect at {self.shown_url} is not reachable ({exc}); is it "
                    "running? check OUTBOX_CONNECT_URL / --connect-url")) from None
            if not _rebalancing(response) or time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            error = ConnectAuthError if response.status_code in (401, 403) else ConnectError
            raise error(self._clean(
                f"Kafka Connect at {self.shown_url}: {method} {path}: "
                f"{response.status_code} {_message(response)}"))
        return response.json() if response.content else None

    def validate(self, connector_class: str, config: dict[str, str]) -> dict[str, list[str]]:
        """Connect's own validation: field name -> its errors (empty when all is well)."""
        result = self._call("PUT", f"/connector-plugins/{connector_class}/config/validate",
                            json=config)
        errors: dict[str, list[str]] = {}
        for entry in result.get("configs", []):
            value = entry.get("value") or {}
            if value.get("errors"):
                errors[value["name"]] = list(value["errors"])
        return errors

    def get_config(self, name: str) -> dict[str, str] | None:
        """The connector's current configuration, or None if it does not exist."""
        config: dict[str, str] | None = self._call("GET", f"/connectors/{name}/config",
                                                   ok_missing=True)
        return config

    def put_config(self, name: str, config: dict[str, str]) -> None:
        """Create the connector or update its configuration (idempotent)."""
        self._call("PUT", f"/connectors/{name}/config", json=config)

    def status(self, name: str) -> dict[str, Any] | None:
        """Connector and task states (with failure traces), or None if it does not exist."""
        status: dict[str, Any] | None = self._call("GET", f"/connectors/{name}/status",
                                                   ok_missing=True)
        return status

    def pause(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/pause")

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{name}/resume")

    def restart(self, name: str) -> None:
        """Restart the connector and its failed tasks."""
        self._call("POST", f"/connectors/{name}/restart?includeTasks=true&onlyFailed=false")

    def delete(self, name: str) -> bool:
        """Delete the connector; False if it did not exist."""
        if self.get_config(name) is None:
            return False
        self._call("DELETE", f"/connectors/{name}", ok_missing=True)
        return True
