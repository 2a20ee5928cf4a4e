"""ConnectClient's retry while Connect's workers rebalance (pure logic: a mock transport).

The real worker is exercised by test_cdc.py and test_worker_restart.py; a rebalance cannot
be produced on demand there, which is why this one case is tested against canned answers.
"""

from __future__ import annotations

import httpx
import pytest

from connect.client import ConnectClient, ConnectError

REBALANCE_EXPECTED = {"error_code": 500,
                      "message": "Request cannot be completed because a rebalance is expected"}
IN_PROGRESS = {"error_code": 409, "message": "Cannot complete request because of a "
                                            "conflicting operation (e.g. worker rebalance)"}


def client_answering(*answers: tuple[int, dict[str, object]],
                     rebalance_wait: float = 5.0) -> tuple[ConnectClient, list[str]]:
    """A client whose requests get ``answers`` in turn (the last one repeats)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = answers[min(len(seen), len(answers) - 1)]
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(status, json=body)

    client = ConnectClient("http://connect.invalid", rebalance_wait=rebalance_wait)
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client, seen


def test_a_request_refused_during_a_rebalance_is_retried() -> None:
    client, seen = client_answering((500, REBALANCE_EXPECTED), (409, IN_PROGRESS),
                                    (200, {"name": "x"}))
    assert client.get_config("x") == {"name": "x"}
    assert seen == ["GET /connectors/x/config"] * 3


def test_other_errors_are_not_retried() -> None:
    client, seen = client_answering((500, {"message": "Connector configuration is invalid"}))
    with pytest.raises(ConnectError, match="500 Connector configuration is invalid"):
        client.put_config("x", {})
    assert len(seen) == 1


def test_a_rebalance_that_does_not_end_is_reported() -> None:
    client, seen = client_answering((409, IN_PROGRESS), rebalance_wait=0.5)
    with pytest.raises(ConnectError, match="409 Cannot complete request"):
        client.pause("x")
    assert len(seen) >= 2
