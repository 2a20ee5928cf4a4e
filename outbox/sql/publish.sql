-- The SQL publish function: publish() for writers in any language and for capture triggers.
-- Rendered by outbox.publish_sql from outbox.rules (the one definition of the rules) and the
-- settings in force at install time: the outbox table, the lock namespace, the topic
-- template and the size limits are constants in the body. `outbox db check` compares the
-- installed body with the one the current settings render.

-- name: create
create or replace function {{function}}(
    aggregatetype text,
    aggregateid text,
    type text,
    payload jsonb,
    correlation_id text default null,
    causation_id text default null,
    traceparent text default null)
returns uuid
language plpgsql
volatile
as $outbox_publish$
-- {{fingerprint}}
declare
    names text[];
    texts text[];
    problem text;
    topic text;
    value_bytes bigint;
    record_bytes bigint;
    created constant timestamp := clock_timestamp() at time zone 'utc';
    event_id uuid;
begin
    -- Every rule of outbox.rules in ONE expression for the common case: PL/pgSQL sets up
    -- each expression it evaluates again in every transaction (~1-2 us apiece), so the
    -- rules are checked one by one, to name the field, only when this says one may fail.
    -- The sizes here are upper bounds (jsonb's text has ", " and ": " between tokens).
    if aggregatetype is null or aggregateid is null or type is null
       or btrim(aggregatetype, {{whitespace}}) = '' or btrim(aggregateid, {{whitespace}}) = ''
       or btrim(type, {{whitespace}}) = ''
       or greatest(char_length(aggregatetype), char_length(aggregateid), char_length(type),
                   char_length(correlation_id), char_length(causation_id),
                   char_length(traceparent)) > {{max_field_length}}
       -- (A bounded repetition, {1,249}, would cost PostgreSQL's regex engine ~15 us.)
       or char_length(replace({{topic_template}}, '{aggregatetype}', aggregatetype)) > 249
       or replace({{topic_template}}, '{aggregatetype}', aggregatetype) in ('.', '..')
       or replace({{topic_template}}, '{aggregatetype}', aggregatetype) !~ '^[A-Za-z0-9._-]+$'
       or payload is null or jsonb_typeof(payload) <> 'object'
       -- The payload's text once: over the payload limit, or over what the record limit
       -- leaves after the key and headers.
       or octet_length(payload::text) > least({{max_payload_bytes}}, {{max_record_bytes}}
          - octet_length(aggregateid) - 2 - 36 - 9 - octet_length(type)
          - coalesce(13 + octet_length(correlation_id), 0)
          - coalesce(11 + octet_length(causation_id), 0)
          - coalesce(11 + octet_length(traceparent), 0))
    then
        -- 1. Text fields: the first three required, not blank; none longer than the limit.
        -- outbox.rules.TEXT_FIELDS in their order: Python's field names, these arguments.
        names := array['aggregate_type', 'aggregate_id', 'event_type',
                       'correlation_id', 'causation_id', 'traceparent'];
        texts := array[aggregatetype, aggregateid, type, correlation_id, causation_id,
                       traceparent];
        for i in 1..6 loop
            if texts[i] is null then
                if i <= 3 then
                    problem := 'is missing';
                end if;
            elsif i <= 3 and btrim(texts[i], {{whitespace}}) = '' then
                problem := 'is empty';
            elsif char_length(texts[i]) > {{max_field_length}} then
                problem := 'is ' || char_length(texts[i]) || ' characters long; the limit is '
                           || {{max_field_length}};
            end if;
            if problem is not null then
                raise exception using errcode = '22023', column = names[i],
                    message = 'outbox event field ''' || names[i] || ''': ' || problem;
            end if;
        end loop;

        -- 2. The topic the aggregate type routes to must be a name Kafka accepts.
        topic := replace({{topic_template}}, '{aggregatetype}', aggregatetype);
        if topic in ('.', '..') or char_length(topic) > 249 or topic !~ '^[A-Za-z0-9._-]+$'
        then
            raise exception using errcode = '22023', column = 'aggregate_type',
                message = 'outbox event field ''aggregate_type'': routes to topic ''' || topic
                          || ''' (topic template ''' || {{topic_template}} || '''), which '
                          || 'Kafka refuses: a topic name is 1 to 249 characters of '
                          || '[A-Za-z0-9._-], not ''.'' or ''..''';
        end if;

        -- 3. The payload is a JSON object.
        if payload is null or jsonb_typeof(payload) <> 'object' then
            raise exception using errcode = '22023', column = 'payload',
                message = 'outbox event field ''payload'': must be a JSON object, got '
                          || coalesce(jsonb_typeof(payload), 'null');
        end if;

        -- 4 and 5. Sizes: the record's value is the payload as compact JSON, jsonb's text
        -- without the spaces outside strings.
        value_bytes := octet_length(regexp_replace(payload::text, '("(?:[^"\\]|\\.)*")| ',
                                                   '\1', 'g'));
        record_bytes := value_bytes + octet_length(aggregateid) + 2 + 36 + 9
                        + octet_length(type) + coalesce(13 + octet_length(correlation_id), 0)
                        + coalesce(11 + octet_length(causation_id), 0)
                        + coalesce(11 + octet_length(traceparent), 0);
        if value_bytes > {{max_payload_bytes}} then
            raise exception using errcode = '54000', column = 'payload',
                message = 'outbox event field ''payload'': is ' || value_bytes
                          || ' bytes as JSON; the limit is ' || {{max_payload_bytes}}
                          || ' bytes (OUTBOX_MAX_PAYLOAD_BYTES)';
        end if;
        if record_bytes > {{max_record_bytes}} then
            raise exception using errcode = '54000', column = 'payload',
                message = 'outbox event field ''payload'': makes a Kafka record of '
                          || record_bytes || ' bytes with its key and headers; the limit is '
                          || {{max_record_bytes}} || ' bytes (OUTBOX_MAX_RECORD_BYTES)';
        end if;
    end if;

    -- The aggregate's lock before the row draws its seq, exactly as publish() takes it
    -- (the lock is the statement's only FROM item, so it is held before the row exists):
    -- per aggregate, seq order is commit order across every writer (docs/ordering.md).
    -- The id is a UUIDv7: 48 bits of Unix milliseconds (of created_at), version 7, then
    -- random bits (gen_random_uuid's, whose variant bits are already RFC 9562's).
    insert into {{table}}
           (id, aggregatetype, aggregateid, type, payload, created_at,
            correlation_id, causation_id, traceparent)
    select encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                      placing substring(int8send(floor(date_part('epoch', created) * 1000)::bigint)
                                        from 3)
                      from 1 for 6), 52, 1), 53, 1), 'hex')::uuid,
           aggregatetype, aggregateid, type, payload, created,
           correlation_id, causation_id, traceparent
      from pg_advisory_xact_lock({{lock_namespace}}, hashtext(aggregatetype || ':' || aggregateid))
    returning id into event_id;
    return event_id;
end
$outbox_publish$;

-- name: comment
comment on function {{function}}(text, text, text, jsonb, text, text, text) is
    'Publish an event in the caller''s transaction, as outbox-toolkit''s publish() does: '
    'per-aggregate lock, validation, UUIDv7 id. Returns the event id.';

-- name: drop
drop function if exists {{function}}(text, text, text, jsonb, text, text, text);

-- name: installed_body
select p.prosrc
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
 where n.nspname = %(schema)s and p.proname = %(name)s
   and p.proargtypes = '25 25 25 3802 25 25 25'::oidvector;
