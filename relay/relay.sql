-- Every SQL statement the relay, `outbox status` and `outbox purge` send, written out whole.
-- Loaded by relay.queries, which fills the placeholders with quoted names only:
--   {{outbox}}         the outbox table, "schema"."table"
--   {{cursor}}         its relay cursor table, "schema"."<table>_relay_cursor"
--   {{outbox_literal}} / {{cursor_literal}}: the same names as string literals
--   {{lock_namespace}}, {{table_key}}, {{shard_key_base}} (table_key << 8): the shard locks'
--   keys (relay.queries.Queries.table_key)
-- Values are always bound parameters (%(name)s). To EXPLAIN one: replace the names, and
-- each %(name)s by a value (relay.window.read_params shows what the window reads take).
--
-- Rows the relay delivers have the columns of relay.rows, in its order: the record's
-- columns (id and payload as text, created_at as epoch milliseconds, ..., traceparent,
-- tracestate), then seq, shard and attempts.
--
-- The window reads (first_window_batch, declare_window) and the backlog take, per shard,
-- an index scan of ix_<table>_window from txid `lo`, skipping what `done` sees, plus a
-- lookup of the shard's `probes` (the window reads) or of each `probe_*` entry (the
-- backlog) (relay.window.scan_bounds). `offset 0` keeps each subquery
-- per shard: pulled up, the planner may prefer to read the whole table in seq order and
-- hash-join the shards (fine on a fresh table, ruinous on one holding days of delivered
-- rows). The per-shard lists are single delimited strings (relay.window.read_params).

-- name: schema_check
-- Whether the outbox table, the relay cursor table (schema version 3) and the tracestate
-- column (schema version 6) exist.
select to_regclass({{outbox_literal}}) is not null, to_regclass({{cursor_literal}}) is not null,
       exists (select from pg_attribute where attrelid = to_regclass({{outbox_literal}})
               and attname = 'tracestate' and not attisdropped)

-- name: missing_privileges
-- What the session's role may not do of what the relay does (no row: everything): read
-- the outbox and record failures and deliveries on it, keep its cursors, and with
-- retention (%(deletes)s) delete delivered rows. The grants of `outbox db roles`.
select what
from (values
    ('SELECT on the outbox table', has_table_privilege({{outbox_literal}}, 'SELECT')),
    ('UPDATE (published_at, attempts, last_error, failed_at) on the outbox table',
     has_column_privilege({{outbox_literal}}, 'published_at', 'UPDATE')
     and has_column_privilege({{outbox_literal}}, 'attempts', 'UPDATE')
     and has_column_privilege({{outbox_literal}}, 'last_error', 'UPDATE')
     and has_column_privilege({{outbox_literal}}, 'failed_at', 'UPDATE')),
    ('SELECT, INSERT, UPDATE on ' || {{cursor_literal}},
     has_table_privilege({{cursor_literal}}, 'SELECT')
     and has_table_privilege({{cursor_literal}}, 'INSERT')
     and has_table_privilege({{cursor_literal}}, 'UPDATE')),
    ('DELETE on the outbox table (--retention)',
     not %(deletes)s or has_table_privilege({{outbox_literal}}, 'DELETE'))
) as needed(what, granted)
where not granted

-- name: load_cursors
-- The relay cursor of each given shard that has one: (shard, done, win, upto).
select shard, done, win, upto from {{cursor}} where shard = any(%(shards)s::smallint[])

-- name: save_cursors
-- Record delivery progress of several shards in one statement.
insert into {{cursor}} (shard, done, win, upto, updated_at)
select *, (now() at time zone 'utc')
from unnest(%(shards)s::smallint[], %(done)s::text[], %(win)s::text[], %(upto)s::int8[])
on conflict (shard) do update
set done = excluded.done, win = excluded.win, upto = excluded.upto,
    updated_at = excluded.updated_at

-- name: snapshot
select pg_current_snapshot()::text

-- name: first_window_batch
-- The first %(limit)s rows of a new window of the given shards, in (shard, seq) order,
-- each with the statement's snapshot (the window of shards that had none) as last column:
-- rows not seen by `done`, visible in `win` (no window yet: the statement's own snapshot),
-- seq above `upto`, and still on the fast path (no last_error). Used on its own while the
-- relay keeps up; a larger window is read on with declare_window.
-- Each shard's rows are sorted on their own (the rows as stored: a large payload is a
-- TOAST pointer; turned into text after the sort, in the outer select) and the shards
-- follow one another in the order given (relay.window.read_params: ascending). Nothing
-- sorts the whole window: the first rows come after the first shard's sort, not after a
-- sort of every row of the window (spilled to disk under a backlog). The relay checks the
-- order of what it reads (relay.window.in_stream_order).
select o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text,
       floor(extract(epoch from o.created_at) * 1000)::int8,
       o.correlation_id, o.causation_id, o.traceparent, o.tracestate, o.seq, o.shard,
       o.attempts,
       pg_current_snapshot()::text
from (
    select r.*
    from unnest(string_to_array(%(shards)s, ',')::smallint[],
                string_to_array(%(done)s, ';', '')::pg_snapshot[],
                string_to_array(%(win)s, ';', '')::pg_snapshot[],
                string_to_array(%(upto)s, ',')::int8[],
                string_to_array(%(lo)s, ',')::xid8[],
                string_to_array(%(probes)s, ';')) as s(shard, done, win, upto, lo, probes)
    cross join lateral (
        select u.* from (
            (select id, aggregatetype, aggregateid, type, payload, created_at, correlation_id,
                    causation_id, traceparent, tracestate, seq, shard, attempts
             from {{outbox}}
             where shard = s.shard and txid >= s.lo
               and not pg_visible_in_snapshot(txid, s.done)
               and (s.win is null or pg_visible_in_snapshot(txid, s.win))
               and seq > s.upto and last_error is null
             offset 0)
            union all
            (select p.*
             from unnest(string_to_array(s.probes, ' ')::xid8[]) as x(xip)
             cross join lateral (
                 select id, aggregatetype, aggregateid, type, payload, created_at,
                        correlation_id, causation_id, traceparent, tracestate, seq, shard,
                        attempts
                 from {{outbox}}
                 where shard = s.shard and txid = x.xip
                   and (s.win is null or pg_visible_in_snapshot(txid, s.win))
                   and seq > s.upto and last_error is null
                 offset 0) as p)
        ) as u
        order by u.seq) as r
    limit %(limit)s
) as o

-- name: declare_window
-- A server-side cursor ({{name}}) over the rest of a large window: the rows of
-- first_window_batch, in the same (shard, seq) order, fetched in batches (relay.reader).
-- Every shard's window is given explicitly.
declare {{name}} no scroll cursor for
select o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text,
       floor(extract(epoch from o.created_at) * 1000)::int8,
       o.correlation_id, o.causation_id, o.traceparent, o.tracestate, o.seq, o.shard,
       o.attempts
from (
    select r.*
    from unnest(string_to_array(%(shards)s, ',')::smallint[],
                string_to_array(%(done)s, ';', '')::pg_snapshot[],
                string_to_array(%(win)s, ';', '')::pg_snapshot[],
                string_to_array(%(upto)s, ',')::int8[],
                string_to_array(%(lo)s, ',')::xid8[],
                string_to_array(%(probes)s, ';')) as s(shard, done, win, upto, lo, probes)
    cross join lateral (
        select u.* from (
            (select id, aggregatetype, aggregateid, type, payload, created_at, correlation_id,
                    causation_id, traceparent, tracestate, seq, shard, attempts
             from {{outbox}}
             where shard = s.shard and txid >= s.lo
               and not pg_visible_in_snapshot(txid, s.done)
               and (s.win is null or pg_visible_in_snapshot(txid, s.win))
               and seq > s.upto and last_error is null
             offset 0)
            union all
            (select p.*
             from unnest(string_to_array(s.probes, ' ')::xid8[]) as x(xip)
             cross join lateral (
                 select id, aggregatetype, aggregateid, type, payload, created_at,
                        correlation_id, causation_id, traceparent, tracestate, seq, shard,
                        attempts
                 from {{outbox}}
                 where shard = s.shard and txid = x.xip
                   and (s.win is null or pg_visible_in_snapshot(txid, s.win))
                   and seq > s.upto and last_error is null
                 offset 0) as p)
        ) as u
        order by u.seq) as r
) as o

-- name: claim_retry
-- Rows taken off the fast path and not delivered or parked, in seq order.
select o.id::text, o.aggregatetype, o.aggregateid, o.type, o.payload::text,
       floor(extract(epoch from o.created_at) * 1000)::int8,
       o.correlation_id, o.causation_id, o.traceparent, o.tracestate, o.seq, o.shard,
       o.attempts
from {{outbox}} as o
where shard = any(%(shards)s::smallint[]) and last_error is not null
  and published_at is null and failed_at is null
order by seq
limit %(limit)s

-- name: mark_published
-- Rows delivered one by one (off the fast path) are marked individually.
update {{outbox}} set published_at = (now() at time zone 'utc')
where seq = any(%(seqs)s) and published_at is null

-- name: hold_waiting
-- Take rows off the fast path behind an earlier failed row of their aggregate that is
-- still being retried: they follow it through the retry claim.
update {{outbox}} set last_error = %(error)s
where seq = any(%(seqs)s) and published_at is null

-- name: record_failure
-- One failed delivery: count it, keep the error, park the row at the limit.
update {{outbox}}
set attempts = attempts + 1, last_error = %(error)s,
    failed_at = case when attempts + 1 >= %(max_attempts)s
                     then (now() at time zone 'utc') end
where seq = %(seq)s and published_at is null
returning failed_at is not null

-- name: hold_back
-- Park rows whose aggregate has an earlier failed row (they must not overtake it).
update {{outbox}} set failed_at = (now() at time zone 'utc'), last_error = %(error)s
where seq = any(%(seqs)s) and published_at is null

-- name: blocked_aggregates
-- Aggregates of these shards with rows off the fast path and not delivered:
-- (aggregatetype, aggregateid, first such seq, shard, whether that row is parked).
select aggregatetype, aggregateid, min(seq), min(shard),
       (array_agg(failed_at is not null order by seq))[1]
from {{outbox}}
where shard = any(%(shards)s::smallint[]) and last_error is not null and published_at is null
group by aggregatetype, aggregateid

-- name: shard_locks
-- Try the lock of each given shard, once each; the shards whose lock this session took.
-- The caller passes only as many shards as it wants. No LIMIT: PostgreSQL does not promise
-- that a LIMIT stops before the locking function ran on rows it does not return (its
-- documentation on advisory locks), and such a lock would be held unknown to the relay.
select u.shard from unnest(%(shards)s::int[]) as u(shard)
where pg_try_advisory_lock({{lock_namespace}}, ({{shard_key_base}} | u.shard))

-- name: shard_unlocks
-- Give up the locks of the given shards (each held by this session).
select pg_advisory_unlock({{lock_namespace}}, ({{shard_key_base}} | u.shard))
from unnest(%(shards)s::int[]) as u(shard)

-- name: live_relays
-- Relay sessions of this table connected to this database, this one included.
select count(distinct application_name) from pg_stat_activity
where datname = current_database() and application_name like %(pattern)s

-- name: logical_slots
-- Logical replication slots of this database (Debezium's, with CDC).
select count(*) from pg_replication_slots
where slot_type = 'logical' and database = current_database()

-- name: shard_owners
-- Every held shard lock of this table's relays: (shard, pid, application_name).
select (l.objid::bigint & 255)::int, l.pid, coalesce(a.application_name, '')
from pg_locks l left join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.objsubid = 2
  and l.classid = {{lock_namespace}}
  and (l.objid::bigint >> 8) = {{table_key}}
  and l.database = (select oid from pg_database where datname = current_database())
order by 1

-- name: backlog
-- Undelivered, unparked rows and the age in seconds of the oldest (parameters:
-- relay.window.read_params): per shard, the fast-path rows its cursor has not covered,
-- plus rows waiting in the retry claim.
select count(*), extract(epoch from (now() at time zone 'utc') - min(created_at))::float8
from (
    select o.created_at
    from (
        select r.*
        from unnest(string_to_array(%(shards)s, ',')::smallint[],
                    string_to_array(%(done)s, ';', '')::pg_snapshot[],
                    string_to_array(%(win)s, ';', '')::pg_snapshot[],
                    string_to_array(%(upto)s, ',')::int8[],
                    string_to_array(%(lo)s, ',')::xid8[]) as s(shard, done, win, upto, lo)
        cross join lateral (
            select created_at from {{outbox}}
            where shard = s.shard and txid >= s.lo
              and not pg_visible_in_snapshot(txid, s.done) and last_error is null
              and not (s.win is not null and seq <= s.upto
                       and pg_visible_in_snapshot(txid, s.win))
            offset 0) as r
        union all
        select r.*
        from unnest(string_to_array(%(probe_shards)s, ',')::smallint[],
                    string_to_array(%(probe_xids)s, ',')::xid8[],
                    string_to_array(%(probe_wins)s, ';', '')::pg_snapshot[],
                    string_to_array(%(probe_upto)s, ',')::int8[]) as s(shard, xip, win, upto)
        cross join lateral (
            select created_at from {{outbox}}
            where shard = s.shard and txid = s.xip and last_error is null
              and not (s.win is not null and seq <= s.upto
                       and pg_visible_in_snapshot(txid, s.win))
            offset 0) as r
    ) as o
    union all
    select created_at from {{outbox}}
    where shard = any(string_to_array(%(shards)s, ',')::smallint[])
      and last_error is not null and published_at is null and failed_at is null
) as pending

-- name: retrying_count
-- Rows off the fast path waiting for the retry claim (failed, not parked yet, or held
-- behind such a row).
select count(*) from {{outbox}}
where last_error is not null and published_at is null and failed_at is null

-- name: oldest_writer
-- Seconds since the oldest transaction holding a transaction id began (it holds back
-- VACUUM, of the outbox too; its own events wait for its commit).
select extract(epoch from now() - min(xact_start))::float8
from pg_stat_activity where backend_xid is not null

-- name: failed_count
select count(*) from {{outbox}} where failed_at is not null and published_at is null

-- name: failed_rows
select seq, id, aggregatetype, aggregateid, type, attempts, failed_at, last_error
from {{outbox}}
where failed_at is not null and published_at is null
order by seq
limit %(limit)s

-- name: retry_failed
-- Un-park failed rows (optionally of one aggregate type / id) for a fresh start.
update {{outbox}} set failed_at = null, attempts = 0
where failed_at is not null and published_at is null
  and (%(aggregatetype)s::text is null or aggregatetype = %(aggregatetype)s)
  and (%(aggregateid)s::text is null or aggregateid = %(aggregateid)s)

-- name: purge_batch
-- Walk %(limit)s rows in seq order after %(after)s; delete those delivered and older than
-- the cutoff. Returns (deleted, last seq walked, rows walked, rows created after the
-- cutoff). Age counts from created_at for rows the relay's cursor delivered (they carry no
-- delivery time) and from published_at for rows delivered one by one. The walk uses the
-- seq index from the oldest row on, and relay.retention.purge stops at the first batch
-- that holds a row created after the cutoff. Rows still pending or parked in the old range
-- are walked over (and walked again on the next run) but never deleted. Writers never
-- touch delivered rows and the relay only updates undelivered ones, so the short delete
-- takes no lock anybody waits for. %(captured)s: Debezium reads rows from the WAL and
-- never marks them, so with CDC an old row counts as delivered once it is older than the
-- cutoff. The last condition is the fast path's "delivered" (see delivered, below).
with walked as materialized (
    select seq, shard, txid, published_at, last_error, created_at
    from {{outbox}} where seq > %(after)s order by seq limit %(limit)s),
deleted as (
    delete from {{outbox}} o using walked w
    where o.seq = w.seq
      and (w.published_at < (now() at time zone 'utc') - make_interval(secs => %(older_than)s)
           or (w.created_at < (now() at time zone 'utc') - make_interval(secs => %(older_than)s)
               and w.published_at is null
               and (%(captured)s or (w.txid is not null and w.last_error is null and exists (
                   select 1 from {{cursor}} c
                   where c.shard = w.shard
                     and (pg_visible_in_snapshot(w.txid, c.done::pg_snapshot)
                          or (c.win is not null and w.seq <= c.upto
                              and pg_visible_in_snapshot(w.txid, c.win::pg_snapshot))))))))
    returning o.seq)
select (select count(*) from deleted), (select max(seq) from walked),
       (select count(*) from walked),
       (select count(*) from walked
        where created_at >= (now() at time zone 'utc') - make_interval(secs => %(older_than)s))

-- name: delivered
-- Not a statement: the condition "outbox row {{row}} (an alias) has been delivered to
-- Kafka", one by one (published_at) or by the relay's cursor (relay.window).
({{row}}.published_at is not null or ({{row}}.txid is not null and {{row}}.last_error is null
 and exists (
    select 1 from {{cursor}} c
    where c.shard = {{row}}.shard
      and (pg_visible_in_snapshot({{row}}.txid, c.done::pg_snapshot)
           or (c.win is not null and {{row}}.seq <= c.upto
               and pg_visible_in_snapshot({{row}}.txid, c.win::pg_snapshot))))))

-- name: notify_trigger
-- A row trigger that NOTIFYs the relays' channel after inserts, with the row's shard as
-- the payload (relay.hints: the relay reads the shards named, not every shard it owns).
-- PostgreSQL sends notifications at commit and folds identical ones of a transaction, so
-- a transaction sends each of its shards once. (An earlier version's statement trigger
-- sent '' once per statement; relays take that as "any shard".)
create or replace function {{trigger_function}}() returns trigger language plpgsql as $$
begin perform pg_notify({{channel_literal}}, coalesce(new.shard::text, '')); return null; end $$;
create or replace trigger {{trigger}} after insert on {{outbox}}
for each row execute function {{trigger_function}}();

-- name: notify_installed
-- The NOTIFY trigger of the outbox table, if installed and enabled: whether it is a row
-- trigger (bit 0 of tgtype), which names shards, or the statement trigger of an earlier
-- version, which does not.
select (tgtype & 1) = 1
from pg_trigger
where tgrelid = to_regclass({{outbox_literal}}) and tgname = {{trigger_literal}}
  and tgenabled <> 'D'

-- name: drop_notify_trigger
drop trigger if exists {{trigger}} on {{outbox}};
drop function if exists {{trigger_function}}();
