/*
 * The native ceiling of bench/relay.py: librdkafka producing a file of prepared records.
 *
 *     producer RECORDS CONFIG TOPIC WARM_TOPIC
 *
 * RECORDS holds the very records the relay sends (same keys, values, headers and
 * timestamps), written by bench/native.py, each as:
 *     u32 key length, key, u32 value length, value, i64 timestamp (ms),
 *     u16 header count, then per header: u16 name length, name, u32 value length, value
 * (integers little-endian). CONFIG holds one librdkafka property per line, key=value: the
 * relay's own producer configuration (relay/producer.py producer_config).
 *
 * Everything is read and parsed before the clock starts, and the producer is warm: one
 * record sent to WARM_TOPIC and acknowledged (connected, and the idempotent producer's id
 * obtained: without it the first records wait for that, 0.5 s or more on a busy broker),
 * and TOPIC's metadata fetched;
 * the clock runs from the first produce to the last delivery report. Printed: one JSON
 * line with the count, the errors and both instants (epoch seconds, the same clock as the
 * broker's append stamps and the bench's).
 */
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *key, *value, *headers;
    uint32_t key_len, value_len;
    int64_t timestamp;
    uint16_t header_count;
} record_t;

static long delivered, failed;
static double last_ack;
static char first_error[512];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "bench/native/producer: %s: %s\n", what, detail);
    exit(2);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque) {
    (void)rk;
    (void)opaque;
    if (msg->err) {
        if (!failed)
            snprintf(first_error, sizeof first_error, "%s", rd_kafka_err2str(msg->err));
        failed++;
    } else {
        delivered++;
    }
    last_ack = now();
}

static uint32_t u32(const char **p) {
    const unsigned char *b = (const unsigned char *)*p;
    *p += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint16_t u16(const char **p) {
    const unsigned char *b = (const unsigned char *)*p;
    *p += 2;
    return (uint16_t)(b[0] | b[1] << 8);
}

static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) die("cannot read", path);
    fclose(f);
    data[n] = '\0';
    *size = (size_t)n;
    return data;
}

static record_t *parse(const char *data, size_t size, long *count) {
    long cap = 1024, n = 0;
    record_t *out = malloc(sizeof *out * (size_t)cap);
    const char *p = data, *end = data + size;
    while (p < end) {
        if (n == cap) out = realloc(out, sizeof *out * (size_t)(cap *= 2));
        record_t *r = &out[n++];
        r->key_len = u32(&p); r->key = p; p += r->key_len;
        r->value_len = u32(&p); r->value = p; p += r->value_len;
        memcpy(&r->timestamp, p, 8); p += 8;
        r->header_count = u16(&p); r->headers = p;
        for (int h = 0; h < r->header_count; h++) {
            uint16_t name_len = u16(&p); p += name_len;
            uint32_t value_len = u32(&p); p += value_len;
        }
        if (p > end) die("truncated records file", "a record runs past its end");
    }
    *count = n;
    return out;
}

static rd_kafka_headers_t *headers_of(const record_t *r) {
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(r->header_count);
    const char *p = r->headers;
    for (int h = 0; h < r->header_count; h++) {
        uint16_t name_len = u16(&p); const char *name = p; p += name_len;
        uint32_t value_len = u32(&p); const char *value = p; p += value_len;
        rd_kafka_header_add(hdrs, name, name_len, value, value_len);
    }
    return hdrs;
}

int main(int argc, char **argv) {
    if (argc != 5) die("usage", "producer RECORDS CONFIG TOPIC WARM_TOPIC");
    size_t size, conf_size;
    char *data = read_file(argv[1], &size);
    long count;
    record_t *records = parse(data, size, &count);

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char *conf_text = read_file(argv[2], &conf_size);
    for (char *line = strtok(conf_text, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        if (!eq) die("config line without '='", line);
        *eq = '\0';
        if (rd_kafka_conf_set(conf, line, eq + 1, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
            die("config", errstr);
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) die("producer", errstr);
    const char *topic = argv[3];

    /* Warm: connected, producer id obtained, the topic's partitions known. */
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(argv[4]), RD_KAFKA_V_VALUE("warm", 4),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    if (err) die("warm-up produce", rd_kafka_err2str(err));
    if (rd_kafka_flush(rk, 30000)) die("warm-up", "not acknowledged within 30 s");
    if (failed) die("warm-up", first_error);
    delivered = 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md;
    err = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (err) die("metadata", rd_kafka_err2str(err));
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);

    double first_produce = now();
    for (long i = 0; i < count; i++) {
        const record_t *r = &records[i];
        for (;;) {
            rd_kafka_headers_t *hdrs = headers_of(r);
            err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_KEY(r->key, r->key_len),
                RD_KAFKA_V_VALUE((void *)r->value, r->value_len),
                RD_KAFKA_V_TIMESTAMP(r->timestamp), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
            if (!err) break;
            rd_kafka_headers_destroy(hdrs); /* not taken over on failure */
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) die("produce", rd_kafka_err2str(err));
            rd_kafka_poll(rk, 10);
        }
        rd_kafka_poll(rk, 0);
    }
    int left = rd_kafka_flush(rk, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR
                   ? rd_kafka_outq_len(rk) : 0;
    printf("{\"events\": %ld, \"delivered\": %ld, \"failed\": %ld, \"undelivered\": %d, "
           "\"first_produce\": %.6f, \"last_ack\": %.6f, \"librdkafka\": \"%s\", "
           "\"first_error\": \"%s\"}\n",
           count, delivered, failed, left, first_produce, last_ack, rd_kafka_version_str(),
           first_error);
    rd_kafka_destroy(rk);
    free(records);
    free(data);
    free(conf_text);
    return failed || left ? 1 : 0;
}
