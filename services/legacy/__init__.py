"""The seed's order chain as it was, rebuilt faithfully: the baseline the outbox is measured
against (bench/migration.py, docs/migration.md).

Four HTTP functions — ``create-order`` → ``process-inventory`` → ``process-payment`` →
``process-shipping`` — plus ``retry-failed-order``. Each commits its own rows, then tells
the next step in one of three ways (:mod:`services.legacy.delivery`):

- ``fetch``: a fire-and-forget HTTP request, not awaited, errors ignored, as the seed's
  ``create-order/index.ts:183`` does;
- ``kafka``: a dual write, commit then produce to Kafka directly; plain Kafka consumers
  (:mod:`services.legacy.dualwrite`) run the next step;
- ``outbox`` (``create-order`` only): the first step of the cutover, the order and its
  ``OrderCreated`` in one transaction; ``outbox forward`` calls ``process-inventory``.

The business rules, tables and gateway simulation are the outbox saga's own
(services.inventory, payment, shipping, order, gateway, tables): only the delivery differs.
"""
