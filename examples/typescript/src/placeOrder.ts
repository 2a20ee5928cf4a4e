// Create an order and its OrderCreated event in ONE PostgreSQL transaction.
//
// The seed's createOrder committed the order and then called fetch() on the inventory
// service: a crash or an outage in between lost the order silently. Here the event is a
// row written by the toolkit's SQL function in the same transaction as the order, so both
// commit or neither does; the relay (or Debezium) delivers it to Kafka afterwards.
//
//   DATABASE_URL=postgresql://... node dist/placeOrder.js ORDER_ID [ORDER_ID ...]
import { randomUUID } from "node:crypto";
import { pathToFileURL } from "node:url";
import pg from "pg";

export interface OrderItem {
  sku: string;
  quantity: number;
}

export interface Order {
  id: string;
  customerId: string;
  items: OrderItem[];
  total: string; // decimal as text: no binary float on money
}

/** Insert the order and publish OrderCreated atomically; returns the event id. */
export async function placeOrder(pool: pg.Pool, order: Order,
                                 correlationId: string = randomUUID()): Promise<string> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query(
      "INSERT INTO orders (id, customer_id, total) VALUES ($1, $2, $3)",
      [order.id, order.customerId, order.total]);
    const payload = {
      eventType: "OrderCreated",
      orderId: order.id,
      customerId: order.customerId,
      items: order.items,
      total: order.total,
      correlationId,
      occurredAt: new Date().toISOString(),
    };
    // outbox_publish(aggregatetype, aggregateid, type, payload, correlation_id,
    //                causation_id, traceparent): the same lock, rules and UUIDv7 ids as
    // Python's publish(). Invalid events raise here (SQLSTATE 22023 or 54000, the field in
    // the error's `column`), and the ROLLBACK below takes the order with them.
    const { rows } = await client.query<{ id: string }>(
      "SELECT outbox_publish($1, $2, $3, $4::jsonb, $5) AS id",
      ["order", order.id, "OrderCreated", JSON.stringify(payload), correlationId]);
    await client.query("COMMIT");
    return rows[0].id;
  } catch (error) {
    await client.query("ROLLBACK");
    throw error;
  } finally {
    client.release();
  }
}

async function main(orderIds: string[]): Promise<void> {
  const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
  try {
    for (const id of orderIds) {
      const eventId = await placeOrder(pool, {
        id, customerId: "customer-1", items: [{ sku: "sku-1", quantity: 2 }], total: "42.50",
      });
      console.log(JSON.stringify({ orderId: id, eventId }));
    }
  } finally {
    await pool.end();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    console.error(`placeOrder failed: ${error instanceof Error ? error.message : error}`);
    process.exit(1);
  });
}
