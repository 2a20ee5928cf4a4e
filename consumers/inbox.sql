-- The statements of the inbox ({{inbox}}: the schema-qualified, quoted table), one row per
-- (consumer group, event id) a group has applied, written in the handler's transaction.
-- Values are bound parameters (:name). To EXPLAIN one: replace {{inbox}} by the table and
-- each :name by a value.

-- name: claim
-- The dedupe row of one event; returns its id, or nothing if the group already applied it.
insert into {{inbox}} (consumer_group, event_id, topic, partition, "offset")
values (:group, :event_id, :topic, :partition, :offset)
on conflict (consumer_group, event_id) do nothing
returning event_id

-- name: claim_many
-- The dedupe rows of a whole batch in one statement over arrays (a VALUES list of
-- len(batch) rows would be planned anew for every batch size); returns the new ids. An id
-- that appears twice in the batch is inserted (and returned) once.
insert into {{inbox}} (consumer_group, event_id, topic, partition, "offset")
select :group, u.event_id, u.topic, u.partition, u.offset
from unnest(cast(:ids as uuid[]), cast(:topics as text[]), cast(:partitions as int[]),
            cast(:offsets as bigint[])) as u(event_id, topic, partition, "offset")
on conflict (consumer_group, event_id) do nothing
returning event_id

-- name: purge_batch
-- Delete up to :batch rows older than :seconds, of every group (:group null) or of one.
delete from {{inbox}} i
using (select consumer_group, event_id from {{inbox}}
       where processed_at < (now() at time zone 'utc') - make_interval(secs => :seconds)
         and (cast(:group as text) is null or consumer_group = cast(:group as text))
       limit :batch) as victims
where i.consumer_group = victims.consumer_group and i.event_id = victims.event_id

-- name: unusable
-- Why this session's role cannot dedupe in the inbox (:name, the table's quoted name as
-- text), or null: 'missing' (no such table), 'denied' (a claim inserts rows and reads the
-- ids they return: INSERT and SELECT, what `outbox db roles` grants the consumer role).
select case
    when to_regclass(:name) is null then 'missing'
    when not (has_table_privilege(:name, 'INSERT') and has_table_privilege(:name, 'SELECT'))
        then 'denied'
  end as problem
