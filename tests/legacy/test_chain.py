"""The legacy chain over HTTP and the strangler's first edge, as separate processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from outbox.settings import Settings
from services.demo import fresh_topics
from services.legacy import variants
from services.runtime import prepare_database

FINAL = ("COMPLETED", "CANCELLED")


def start(name: str, database_url: str, kafka_bootstrap: str, topic: str,
          tmp_path: Path) -> variants.Variant:
    template = topic + "-{aggregatetype}-events"
    settings = Settings(database_url=database_url, kafka_bootstrap_servers=kafka_bootstrap,
                        topic_template=template)
    fresh_topics(settings)
    prepare_database(settings)
    variant = variants.build(name, {"OUTBOX_DATABASE_URL": database_url,
                                    "OUTBOX_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                    "OUTBOX_TOPIC_TEMPLATE": template},
                             tmp_path / "logs", tmp_path / "forward.toml")
    variant.start()
    return variant


@pytest.fixture
def legacy(database_url: str, kafka_bootstrap: str, topic: str,
           tmp_path: Path) -> Iterator[variants.Variant]:
    variant = start("legacy", database_url, kafka_bootstrap, topic, tmp_path)
    try:
        yield variant
    finally:
        variant.processes.stop_all()


def order(entry: str, customer: str, sku: str, quantity: int = 1) -> str:
    response = httpx.post(entry, json={"customerId": customer, "amount": "20.00",
                                       "items": [{"sku": sku, "quantity": quantity}]},
                          timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["orderId"])


def statuses(url: str, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("select id, status, reason from orders.orders where id = any(%s)",
                            (ids,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def wait_final(url: str, ids: list[str], timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = statuses(url, ids)
        if len(found) == len(ids) and all(s in FINAL for s, _ in found.values()):
            return found
        assert time.monotonic() < deadline, f"not final: {found}"
        time.sleep(0.2)


def test_the_chain_applies_the_sagas_rules(legacy: variants.Variant, database_url: str) -> None:
    happy = order(legacy.entry, "c-1", "SKU-BOOK", 2)
    scarce = order(legacy.entry, "c-2", "SKU-RARE", 10)
    declined = order(legacy.entry, "decline-3", "SKU-MUG")
    found = wait_final(database_url, [happy, scarce, declined])
    assert found[happy] == ("COMPLETED", None)
    assert found[scarce][0] == "CANCELLED" and "SKU-RARE" in str(found[scarce][1])
    assert found[declined] == ("CANCELLED", "card declined by issuer")
    with psycopg.connect(database_url) as conn:
        stock = {str(k): int(v) for k, v in conn.execute(
            "select sku, available from inventory.stock").fetchall()}
    assert (stock["SKU-BOOK"], stock["SKU-MUG"], stock["SKU-RARE"]) == (99_998, 100_000, 5)


def test_an_order_lost_while_inventory_was_down_needs_retry_failed_order(
        legacy: variants.Variant, database_url: str) -> None:
    legacy.processes.stop("inventory")
    lost = order(legacy.entry, "c-5", "SKU-PEN")  # 201: the fetch failed, nobody knows
    legacy.processes.start("inventory")
    time.sleep(3)
    assert statuses(database_url, [lost])[lost] == ("PENDING", None)  # and stays so
    base = legacy.entry.rsplit("/", 1)[0]
    response = httpx.post(base + "/retry-failed-order", json={"orderId": lost}, timeout=10)
    assert response.status_code == 200 and "process-inventory" in response.json()["note"]
    assert wait_final(database_url, [lost])[lost] == ("COMPLETED", None)


def test_strangler_first_edge_outbox_forward_to_the_legacy_endpoint(
        database_url: str, kafka_bootstrap: str, topic: str, tmp_path: Path) -> None:
    strangler = start("strangler", database_url, kafka_bootstrap, topic, tmp_path)
    try:
        ids = [order(strangler.entry, f"c-{n}", "SKU-BOOK") for n in range(5)]
        ids.append(order(strangler.entry, "decline-9", "SKU-PEN"))
        found = wait_final(database_url, ids, timeout=60)
    finally:
        codes = strangler.processes.stop_all()
    assert [s for s, _ in found.values()].count("COMPLETED") == 5
    assert codes["forward"] == 0 and codes["relay"] == 0, codes
    with psycopg.connect(database_url) as conn:
        events = conn.execute("select count(*) from orders.outbox where type = "
                              "'OrderCreated'").fetchone()
        forwarded = conn.execute("select count(*) from inventory.inbox where "
                                 "consumer_group = 'inventory-forward'").fetchone()
    assert events == (6,) and forwarded == (6,)
