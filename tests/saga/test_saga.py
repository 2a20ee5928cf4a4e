"""The order saga on the toolkit: four services and a relay, each in its own process."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from outbox.cli import main as outbox_main
from outbox.settings import Settings
from services.cli import main as saga_main
from services.launcher import SagaProcesses
from services.runtime import for_service, prepare_database
from tests.harness.kafka import consume_all, create_topic

FINAL = ("COMPLETED", "CANCELLED")


@pytest.fixture
def saga(database_url: str, kafka_bootstrap: str, topic: str,
         tmp_path: Path) -> Iterator[SagaProcesses]:
    template = topic + "-{aggregatetype}-events"
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=template)
    for aggregate in ("order", "inventory", "payment", "shipping"):
        create_topic(kafka_bootstrap, template.replace("{aggregatetype}", aggregate), 3)
    prepare_database(settings)
    procs = SagaProcesses(env={"OUTBOX_DATABASE_URL": database_url,
                               "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                               "OUTBOX_TOPIC_TEMPLATE": template},
                          log_dir=tmp_path / "logs")
    procs.start_all()
    try:
        yield procs
    finally:
        codes = procs.stop_all()
        assert all(code == 0 for code in codes.values()), codes


def place(saga: SagaProcesses, customer: str, sku: str, quantity: int = 1,
          amount: str = "20.00", key: str | None = None) -> dict[str, Any]:
    headers = {"Idempotency-Key": key} if key else {}
    response = httpx.post(saga.api + "/orders", json={
        "customerId": customer, "items": [{"sku": sku, "quantity": quantity}],
        "amount": amount, "currency": "EUR"}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_final(saga: SagaProcesses, order_ids: list[str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    orders: dict[str, Any] = {}
    while time.monotonic() < deadline:
        orders = {oid: httpx.get(f"{saga.api}/orders/{oid}", timeout=5).json()
                  for oid in order_ids}
        if all(o["status"] in FINAL for o in orders.values()):
            return orders
        time.sleep(0.3)
    raise AssertionError(f"not final after {timeout}s: "
                         f"{ {k: v['status'] for k, v in orders.items()} }")


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def test_happy_path_and_both_compensations(saga: SagaProcesses, database_url: str,
                                           kafka_bootstrap: str, topic: str) -> None:
    happy = place(saga, "c-1", "SKU-BOOK", 2)
    no_stock = place(saga, "c-2", "SKU-RARE", 10)  # only 5 in stock
    declined = place(saga, "decline-3", "SKU-MUG", 1)
    orders = wait_final(saga, [happy["orderId"], no_stock["orderId"], declined["orderId"]])

    assert orders[happy["orderId"]]["status"] == "COMPLETED"
    assert [h["eventType"] for h in orders[happy["orderId"]]["history"]] == [
        "OrderCreated", "InventoryReserved", "PaymentAuthorized", "ShipmentScheduled"]
    assert orders[no_stock["orderId"]]["status"] == "CANCELLED"
    assert "SKU-RARE" in orders[no_stock["orderId"]]["reason"]
    assert orders[declined["orderId"]]["status"] == "CANCELLED"
    assert "declined" in orders[declined["orderId"]]["reason"]

    # Compensation: the declined order's reservation was released, stock is back.
    wait = time.monotonic() + 20
    while scalar(database_url, "select available from inventory.stock where sku = 'SKU-MUG'") \
            != 100_000 and time.monotonic() < wait:
        time.sleep(0.3)
    assert scalar(database_url,
                  "select available from inventory.stock where sku = 'SKU-MUG'") == 100_000
    assert scalar(database_url,
                  "select available from inventory.stock where sku = 'SKU-BOOK'") == 99_998
    assert scalar(database_url, "select available from inventory.stock where sku = 'SKU-RARE'") == 5
    assert scalar(database_url, "select count(*) from payment.payments") == 2

    # A consumer written without the toolkit (a plain Kafka client) reads order-events:
    # the order id is the key, the JSON value carries eventType, orderId, correlationId.
    records = consume_all(kafka_bootstrap, f"{topic}-order-events", expected=3, idle=0.5)
    by_key = {r.key: json.loads(r.value or b"{}") for r in records}
    value = by_key[happy["orderId"].encode()]
    assert value["eventType"] == "OrderCreated"
    assert value["orderId"] == happy["orderId"]
    assert value["correlationId"] == happy["correlationId"]
    assert {"eventId", "occurredAt"} <= value.keys()
    released = consume_all(kafka_bootstrap, f"{topic}-inventory-events", timeout=5, idle=0.5)
    assert "InventoryReleased" in {json.loads(r.value or b"{}")["eventType"] for r in released}

    # Replaying every outbox row of the finished run changes nothing.
    env = {"OUTBOX_DATABASE_URL": database_url, "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "OUTBOX_TOPIC_TEMPLATE": f"{topic}-{{aggregatetype}}-events"}
    for schema in ("orders", "inventory", "payment", "shipping"):
        result = CliRunner().invoke(outbox_main, ["replay", "--all", "--yes", "--schema", schema],
                                    env=env)
        assert result.exit_code == 0, result.output
    time.sleep(5)
    assert scalar(database_url,
                  "select available from inventory.stock where sku = 'SKU-BOOK'") == 99_998
    assert scalar(database_url,
                  "select available from inventory.stock where sku = 'SKU-MUG'") == 100_000
    assert scalar(database_url, "select count(*) from payment.payments") == 2
    assert scalar(database_url, "select count(*) from shipping.shipments") == 1
    assert scalar(database_url, "select count(*) from orders.order_history") == 10
    # The saga-level retry re-sends one order's events; nothing changes either.
    result = CliRunner().invoke(saga_main, ["retry", happy["orderId"]], env=env)
    assert result.exit_code == 0, result.output
    assert "re-sent 4 event(s)" in result.output


def test_api_validation_and_idempotency_key(saga: SagaProcesses) -> None:
    bad = httpx.post(saga.api + "/orders", json={"customerId": "c", "items": [],
                                                 "amount": "-1"}, timeout=10)
    assert bad.status_code == 422
    assert "items" in bad.text
    key = str(uuid.uuid4())
    first = place(saga, "c-9", "SKU-PEN", key=key)
    again = place(saga, "c-9", "SKU-PEN", key=key)
    assert again["orderId"] == first["orderId"]
    conflict = httpx.post(saga.api + "/orders", json={
        "customerId": "c-9", "items": [{"sku": "SKU-PEN", "quantity": 5}], "amount": "20.00"},
        headers={"Idempotency-Key": key}, timeout=10)
    assert conflict.status_code == 409
    assert httpx.get(saga.api + "/orders/nope", timeout=5).status_code == 404
    wait_final(saga, [first["orderId"]])


@pytest.mark.slow
def test_consumer_killed_mid_flow_and_restarted(saga: SagaProcesses, database_url: str) -> None:
    ids = [place(saga, f"c-{n}", "SKU-BOOK")["orderId"] for n in range(15)]
    time.sleep(0.5)
    saga.kill("payment")
    ids += [place(saga, f"c-{n}", "SKU-PEN")["orderId"] for n in range(15, 30)]
    time.sleep(1)
    saga.kill("inventory")
    time.sleep(1)
    saga.start("payment")
    saga.start("inventory")
    orders = wait_final(saga, ids, timeout=120)
    assert {o["status"] for o in orders.values()} == {"COMPLETED"}
    assert scalar(database_url, "select count(*) from payment.payments") == 30
    assert scalar(database_url, "select sum(100000 - available) from inventory.stock "
                                "where sku in ('SKU-BOOK', 'SKU-PEN')") == 30
    assert scalar(database_url, "select count(*) from shipping.shipments") == 30


def test_settings_for_a_service_keep_the_rest(database_url: str) -> None:
    base = Settings(database_url=database_url, topic_template="x-{aggregatetype}")
    svc = for_service(base, "payment")
    assert (svc.db_schema, svc.topic_template, svc.database_url) == (
        "payment", "x-{aggregatetype}", database_url)


def test_every_process_answers_health(saga: SagaProcesses) -> None:
    """The relay process reports each of its relays; the order API its consumer."""
    urls = saga.health_urls()
    assert set(urls) == {"relay", "inventory", "payment", "shipping", "order-api"}
    for name, url in urls.items():
        response = httpx.get(url, timeout=5)
        assert response.status_code == 200, (name, response.text)
    relay = httpx.get(urls["relay"], timeout=5).json()
    assert set(relay["workers"]) == {"relay-orders", "relay-inventory", "relay-payment",
                                     "relay-shipping"}
    assert all(w["alive"] and w["healthy"] for w in relay["workers"].values())
    assert httpx.get(urls["inventory"], timeout=5).json()["reason"] == "consuming"
    assert httpx.get(urls["order-api"], timeout=5).json() == {"status": "ok",
                                                              "reason": "running"}
