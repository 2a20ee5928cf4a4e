// Reserve inventory for each OrderCreated event, exactly once in effect.
//
// Kafka delivers at least once: after a crash between our database commit and KafkaJS's
// offset commit, the same event comes again. So the event id (header `id`) is recorded in
// the toolkit's inbox table in the SAME transaction as the effect; the dedupe key is
// (consumer group, event id). A redelivered event finds its inbox row and changes nothing.
// KafkaJS commits an offset only after eachMessage resolves, i.e. after our COMMIT.
//
//   DATABASE_URL=... KAFKA_BROKERS=host:port TOPIC=order-events GROUP_ID=inventory-service-group \
//     node dist/inventoryConsumer.js
import { Kafka, logLevel, type KafkaMessage } from "kafkajs";
import pg from "pg";

const groupId = process.env.GROUP_ID ?? "inventory-service-group";
const topic = process.env.TOPIC ?? "order-events";
// Test hook: exit right after the n-th database commit, before the offset is committed.
const crashAfterCommits = Number(process.env.CRASH_AFTER_COMMITS ?? "0");
let commits = 0;

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
const kafka = new Kafka({ clientId: "inventory-service", logLevel: logLevel.WARN,
                          brokers: (process.env.KAFKA_BROKERS ?? "localhost:9092").split(",") });
const consumer = kafka.consumer({ groupId });

interface OrderCreated {
  eventType: string;
  orderId: string;
  correlationId?: string;
}

async function handle(topicName: string, partition: number,
                      message: KafkaMessage): Promise<void> {
  const eventId = message.headers?.id?.toString();
  if (!eventId || !message.value) {
    // The toolkit's Python consumers send such a message to `<topic>.dlq`; kept short here.
    console.log(JSON.stringify({ skipped: message.offset, reason: "no id header or value" }));
    return;
  }
  const event = JSON.parse(message.value.toString()) as OrderCreated;
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    const claimed = await client.query(
      `INSERT INTO inbox (consumer_group, event_id, topic, partition, "offset")
       VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
      [groupId, eventId, topicName, partition, message.offset]);
    if (claimed.rowCount === 1) {
      await client.query(
        "INSERT INTO inventory_reservations (order_id, event_id) VALUES ($1, $2)",
        [event.orderId, eventId]);
      // The next event of the saga commits with the effect (causation: this event).
      await client.query(
        "SELECT outbox_publish($1, $2, $3, $4::jsonb, $5, $6)",
        ["inventory", event.orderId, "InventoryReserved",
         JSON.stringify({ eventType: "InventoryReserved", orderId: event.orderId }),
         event.correlationId ?? null, eventId]);
    }
    await client.query("COMMIT");
    console.log(JSON.stringify({ [claimed.rowCount === 1 ? "applied" : "duplicate"]: eventId }));
  } catch (error) {
    await client.query("ROLLBACK");
    throw error; // KafkaJS retries the message; its offset is not committed
  } finally {
    client.release();
  }
  commits += 1;
  if (commits === crashAfterCommits) process.exit(99);
}

async function stop(): Promise<void> {
  await consumer.disconnect();
  await pool.end();
  process.exit(0);
}

process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());

await consumer.connect();
await consumer.subscribe({ topic, fromBeginning: true });
await consumer.run({
  eachMessage: ({ topic: topicName, partition, message }) => handle(topicName, partition, message),
});
