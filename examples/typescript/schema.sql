-- The examples' own tables. The toolkit's (outbox, inbox, outbox_publish) come from
-- `outbox db upgrade`.
create table if not exists orders (
    id text primary key,
    customer_id text not null,
    total numeric(10, 2) not null,
    status text not null default 'PENDING',
    created_at timestamptz not null default now()
);

create table if not exists inventory_reservations (
    order_id text primary key,
    event_id uuid not null,
    reserved_at timestamptz not null default now()
);
