-- Trigger capture: an event per row written to an existing business table, published
-- through the SQL publish function in the writer's own transaction. Rendered by
-- outbox.capture; each capture is one function in the toolkit's schema and one trigger on
-- the business table, both named <outbox>_capture_<name>. The capture's definition is the
-- function's comment (JSON), which is what `outbox capture list` reads.

-- name: function
create or replace function {{function}}()
returns trigger
language plpgsql
volatile
as $outbox_capture$
declare
    new_row jsonb;
    old_row jsonb;
    payload jsonb;
begin
    if ({{condition}}) is not true then
        return null;
    end if;
    if tg_op <> 'DELETE' then
        new_row := {{new_payload}};
    end if;
    if tg_op <> 'INSERT' then
        old_row := {{old_payload}};
    end if;
    payload := {{payload}};
    perform {{publish}}(
        {{aggregate_type}},
        (case when tg_op = 'DELETE' then old.{{id_column}} else new.{{id_column}} end)::text,
        {{event_type}},
        payload);
    return null;
end
$outbox_capture$;

-- name: comment
comment on function {{function}}() is {{definition}};

-- name: drop_trigger
drop trigger if exists {{trigger}} on {{table}};

-- name: create_trigger
create trigger {{trigger}}
    after {{operations}} on {{table}}
    for each row execute function {{function}}();

-- name: drop_function
drop function if exists {{function}}();

-- name: check_condition
-- Resolves the condition's columns and types against the table without running it: a
-- mistake is reported now, not by the legacy writer's first statement. tg_op is there too.
select 1
  from {{table}} as new, {{table}} as old, (select 'INSERT'::text as tg_op) as trigger_call
 where ({{condition}}) is true
 limit 0;

-- name: installed
select p.proname, d.description,
       (select string_agg(quote_ident(tn.nspname) || '.' || quote_ident(tc.relname), ', ')
          from pg_trigger t
          join pg_class tc on tc.oid = t.tgrelid
          join pg_namespace tn on tn.oid = tc.relnamespace
         where t.tgfoid = p.oid and not t.tgisinternal) as attached_to
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
  left join pg_description d on d.objoid = p.oid and d.classoid = 'pg_proc'::regclass
 where n.nspname = %(schema)s and starts_with(p.proname, %(prefix)s)
 order by p.proname;

-- name: columns
select a.attname
  from pg_attribute a
 where a.attrelid = to_regclass(%(table)s) and a.attnum > 0 and not a.attisdropped
 order by a.attnum;
