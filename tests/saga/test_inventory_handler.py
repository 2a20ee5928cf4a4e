"""The inventory service's handlers tested as a user of outbox.testing would (docs/testing.md).

The real database (the saga's schemas, a few SKUs in stock), no Kafka, no relay: each test
delivers events to ``services.inventory.consumer`` and looks at the rows and the outbox.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from outbox.settings import Settings
from outbox.testing import TestClient
from services import inventory
from services.runtime import prepare_database


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url)
    prepare_database(settings, stock={"SKU-BOOK": 3, "SKU-MUG": 1})
    with TestClient(inventory.consumer(settings)) as client:
        yield client  # everything the test delivers is rolled back afterwards


def order_created(order_id: str, **quantities: int) -> dict[str, Any]:
    return {"eventType": "OrderCreated", "orderId": order_id, "correlationId": f"c-{order_id}",
            "customerId": "cust-1", "amount": "25.00", "currency": "EUR",
            "items": [{"sku": sku.replace("_", "-"), "quantity": q}
                      for sku, q in quantities.items()]}


def available(client: TestClient, sku: str) -> int:
    [row] = client.query("select available from inventory.stock where sku = :sku", sku=sku)
    return int(row.available)


def test_an_order_reserves_its_stock_and_says_so_once(client: TestClient) -> None:
    result = client.deliver("order-events", order_created("o-1", SKU_BOOK=2), key="o-1")
    assert result.status == "applied"
    assert available(client, "SKU-BOOK") == 1
    [reserved] = client.published()
    assert (reserved.event_type, reserved.aggregate_id) == ("InventoryReserved", "o-1")
    assert reserved.payload["items"] == [{"sku": "SKU-BOOK", "quantity": 2}]
    assert reserved.causation_id == str(result.event_id)
    assert reserved.correlation_id == "c-o-1"
    # Kafka delivers at least once: the same event again is skipped by the inbox.
    assert client.deliver_again(result).status == "duplicate"
    assert available(client, "SKU-BOOK") == 1 and len(client.published()) == 1


def test_an_order_over_the_stock_reserves_nothing_and_fails(client: TestClient) -> None:
    client.deliver("order-events", order_created("o-2", SKU_BOOK=1, SKU_MUG=2))
    assert (available(client, "SKU-BOOK"), available(client, "SKU-MUG")) == (3, 1)
    [failed] = client.published()
    assert failed.event_type == "InventoryReservationFailed"
    assert "not enough stock of SKU-MUG" in failed.payload["reason"]


def test_a_failed_payment_puts_the_stock_back(client: TestClient) -> None:
    client.deliver("order-events", order_created("o-3", SKU_MUG=1))
    assert available(client, "SKU-MUG") == 0
    client.deliver("payment-events", {"eventType": "PaymentFailed", "orderId": "o-3",
                                      "correlationId": "c-o-3", "reason": "declined"})
    assert available(client, "SKU-MUG") == 1
    assert [e.event_type for e in client.published()] == ["InventoryReserved",
                                                          "InventoryReleased"]


def test_an_order_without_lines_is_dead_lettered_naming_the_field(client: TestClient) -> None:
    result = client.deliver("order-events", order_created("o-4"))
    assert (result.status, result.reason) == ("dead-lettered", "invalid-payload")
    assert "items" in str(result.error)
    assert client.published() == [] and client.inbox() == []
