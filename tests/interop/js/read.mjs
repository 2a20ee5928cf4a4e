// Read a topic from the beginning with KafkaJS's defaults, as the seed's consumers do
// (consumer.run({ eachMessage })), and print each record as one JSON line: topic,
// partition, offset, key, value and headers as UTF-8 text (null when absent).
//
//   node read.mjs BROKERS TOPIC COUNT [TIMEOUT_MS]
//
// Exits 0 after COUNT records, 2 when the timeout passes first, 1 on any KafkaJS error
// (an undecodable codec fails here: KafkaJSNotImplemented).
import { Kafka, logLevel } from "kafkajs";

const [brokers, topic, count, timeoutMs = "60000"] = process.argv.slice(2);
const kafka = new Kafka({ clientId: "outbox-interop", brokers: brokers.split(","),
                          logLevel: logLevel.ERROR });
const consumer = kafka.consumer({ groupId: `interop-${process.pid}-${Date.now()}` });
const text = (buffer) => (buffer == null ? null : buffer.toString("utf8"));
let seen = 0;
let finished = false;

async function finish(code) {
  if (finished) return;
  finished = true;
  await consumer.disconnect().catch(() => {});
  process.exit(code);
}

setTimeout(() => finish(2), Number(timeoutMs));
consumer.on(consumer.events.CRASH, ({ payload }) => {
  console.error(`kafkajs crash: ${payload.error?.name}: ${payload.error?.message}`);
  finish(1);
});

await consumer.connect();
await consumer.subscribe({ topic, fromBeginning: true });
await consumer.run({
  eachMessage: async ({ topic: t, partition, message }) => {
    const headers = Object.fromEntries(
      Object.entries(message.headers ?? {}).map(([name, value]) => [name, text(value)]));
    console.log(JSON.stringify({ topic: t, partition, offset: message.offset,
                                 key: text(message.key), value: text(message.value),
                                 headers }));
    seen += 1;
    if (seen >= Number(count)) setImmediate(() => finish(0));
  },
});
