-- The statements of outbox forward's park table ({{table}}: schema-qualified, quoted).
-- An event is parked when its route could not deliver it yet: it failed and waits for
-- its retry, or an earlier event of its key is parked (it waits behind that one, so
-- per-key order holds while other keys flow). The table is empty when all is well.

-- name: create
create table if not exists {{table}} (
    seq bigint generated always as identity primary key,
    route varchar(64) not null,
    key text not null,
    event_id uuid not null,
    event_type varchar(255) not null,
    topic text not null,
    partition int not null,
    "offset" bigint not null,
    timestamp_ms bigint not null,
    kafka_key bytea,
    value bytea not null,
    header_names text[] not null,
    header_values bytea[] not null,
    attempts int not null default 0,
    -- null: due as soon as it is the oldest of its key
    next_attempt_at timestamptz,
    last_status int,
    last_error text,
    last_latency_ms double precision,
    parked_at timestamptz not null default now(),
    unique (route, event_id)
);
create index if not exists {{index}} on {{table}} (route, key, seq);

-- name: parked_keys
-- Which of a batch's keys have an event waiting: one index probe on (route, key, seq) per
-- key, one statement per batch and route (the table is empty while all is well).
select distinct key from {{table}} where route = :route and key = any(:keys);

-- name: park
insert into {{table}} (route, key, event_id, event_type, topic, partition, "offset",
                     timestamp_ms, kafka_key, value, header_names, header_values, attempts,
                     next_attempt_at, last_status, last_error, last_latency_ms)
values (:route, :key, :event_id, :event_type, :topic, :partition, :offset, :timestamp_ms,
        :kafka_key, :value, :header_names, :header_values, :attempts,
        clock_timestamp() + make_interval(secs => cast(:delay as double precision)),
        :last_status, :last_error, :last_latency_ms)
on conflict (route, event_id) do nothing;

-- name: claim_due
-- The oldest parked event of some key, if it is due, locked for this worker. A row of a
-- key whose head another worker holds is not a head here (the head is still visible), so
-- a key is never worked on by two workers and never out of order.
select p.seq, p.route, p.key, p.event_id, p.event_type, p.topic, p.partition, p."offset",
       p.timestamp_ms, p.kafka_key, p.value, p.header_names, p.header_values, p.attempts
  from {{table}} p
 where p.route = any(:routes)
   and (p.next_attempt_at is null or p.next_attempt_at <= clock_timestamp())
   and not exists (select 1 from {{table}} q
                    where q.route = p.route and q.key = p.key and q.seq < p.seq)
 order by p.next_attempt_at nulls first, p.seq
 limit 1
   for update of p skip locked;

-- name: reschedule
update {{table}}
   set attempts = :attempts, next_attempt_at = clock_timestamp()
                                         + make_interval(secs => cast(:delay as double precision)),
       last_status = :last_status, last_error = :last_error, last_latency_ms = :last_latency_ms
 where seq = :seq;

-- name: settle
delete from {{table}} where seq = :seq;

-- name: next_due
-- Seconds until the earliest retry of a head, for the workers' sleep (null: none waits).
select extract(epoch from min(p.next_attempt_at) - clock_timestamp())
  from {{table}} p
 where p.route = any(:routes)
   and not exists (select 1 from {{table}} q
                    where q.route = p.route and q.key = p.key and q.seq < p.seq);

-- name: counts
select route, count(*) from {{table}} where route = any(:routes) group by route;
