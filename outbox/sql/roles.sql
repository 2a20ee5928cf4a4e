-- Least-privilege roles of the toolkit, printed by `outbox db roles --sql` (outbox.roles),
-- in three steps: roles (before `outbox db upgrade`), grants and publication (after it).

-- name: roles
-- Step 1, as a superuser or a role with CREATEROLE: the toolkit's roles and its schema.
-- The group roles cannot log in: grant each to a login role of yours, for example
--   CREATE ROLE billing_api LOGIN PASSWORD '...' IN ROLE {{writer}};
-- {{migrator}} and {{cdc}} log in themselves (set their passwords with \password):
-- {{migrator}} owns the toolkit's tables, and REPLICATION, which Debezium needs, is an
-- attribute of the login role itself (role membership does not pass it on).
do $roles$ begin
  if not exists (select from pg_roles where rolname = {{migrator_literal}}) then
    create role {{migrator}} login;
  end if;
  if not exists (select from pg_roles where rolname = {{writer_literal}}) then
    create role {{writer}} nologin;
  end if;
  if not exists (select from pg_roles where rolname = {{relay_literal}}) then
    create role {{relay}} nologin;
  end if;
  if not exists (select from pg_roles where rolname = {{consumer_literal}}) then
    create role {{consumer}} nologin;
  end if;
  if not exists (select from pg_roles where rolname = {{cdc_literal}}) then
    create role {{cdc}} login replication;
  end if;
end $roles$;
-- Migrations (`outbox db upgrade`, `outbox relay install-notify`) create the toolkit's
-- tables, indexes and trigger in the schema, and nothing anywhere else.
create schema if not exists {{schema}} authorization {{migrator}};
grant usage, create on schema {{schema}} to {{migrator}};
grant usage on schema {{schema}} to {{writer}}, {{relay}}, {{consumer}}, {{cdc}};
-- A consumer's handler publishes events in its transaction: a consumer is a writer too.
grant {{writer}} to {{consumer}};

-- name: grants
-- Step 2, after `outbox db upgrade` (the grants name its tables), as {{migrator}} or a
-- superuser.
-- Writers (services calling publish(), or the SQL function from any language and from
-- capture triggers, which run as the writing role): add events; never read, change or
-- delete any.
grant insert on {{outbox}} to {{writer}};
-- (the function returns the id it wrote: RETURNING takes SELECT on that column, not more)
grant select (id) on {{outbox}} to {{writer}};
grant execute on function {{publish_function}}(text, text, text, jsonb, text, text, text)
  to {{writer}};
-- The relay: read what to send, record delivery (its cursor, and the columns of rows
-- delivered one by one or parked), and delete delivered rows (--retention, outbox purge).
grant select, delete on {{outbox}} to {{relay}};
grant update (published_at, attempts, last_error, failed_at) on {{outbox}} to {{relay}};
grant select, insert, update on {{cursor}} to {{relay}};
-- Consumers: their dedupe rows (read, add, purge); nothing of the outbox but adding.
grant select, insert, delete on {{inbox}} to {{consumer}};
-- Debezium (CDC): read the outbox (and stream it: step 3).
grant select on {{outbox}} to {{cdc}};

-- name: publication
-- Step 3, for Debezium only, as a superuser (creating a publication takes CREATE on the
-- database and ownership of the table): the outbox table alone, published for the
-- connector, which finds it under its name (publication.autocreate.mode=filtered).
do $publication$ begin
  if not exists (select from pg_publication where pubname = {{publication_literal}}) then
    create publication {{publication}} for table {{outbox}};
  end if;
end $publication$;
