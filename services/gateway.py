"""Payment gateways. The saga talks to one through :class:`PaymentGateway`.

The simulated gateway is the default: configurable decline rate and latency, and it
declines customers whose id starts with ``decline`` so demos and tests can aim for the
compensation path. A real gateway adapter must honour the idempotency key (the order id)
the way card processors do, so that a retried authorisation never charges twice.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True)
class Authorization:
    """A gateway's answer."""

    approved: bool
    reference: str
    reason: str | None = None


class PaymentGateway(Protocol):
    """Authorises an amount for a customer; ``idempotency_key`` makes retries safe."""

    def authorize(self, idempotency_key: str, customer_id: str, amount: Decimal,
                  currency: str) -> Authorization: ...


@dataclass
class SimulatedGateway:
    """A stand-in card processor: deterministic per idempotency key, so retries agree."""

    decline_rate: float = 0.0
    latency_seconds: float = 0.0
    limit: Decimal = Decimal("10000")

    def authorize(self, idempotency_key: str, customer_id: str, amount: Decimal,
                  currency: str) -> Authorization:
        if self.latency_seconds:
            time.sleep(self.latency_seconds)
        reference = "sim_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
        if customer_id.startswith("decline"):
            return Authorization(False, reference, "card declined by issuer")
        if amount > self.limit:
            return Authorization(False, reference, f"amount {amount} {currency} over the limit")
        # The same key always draws the same number: a retry gets the same answer.
        draw = int(hashlib.sha256(b"decline:" + idempotency_key.encode()).hexdigest()[:8], 16)
        if draw / 0xFFFFFFFF < self.decline_rate:
            return Authorization(False, reference, "declined (simulated decline rate)")
        return Authorization(True, reference)
