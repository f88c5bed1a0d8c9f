-- slotlog: the whole database schema. Idempotent: applied by `slotlog migrate` and at every start.
-- Sections: event store · tenants and keys · idempotency · projections' checkpoints · read models.
-- Serialised by an advisory lock so that several processes starting at once do not race on DDL.
SELECT pg_advisory_lock(7320001);

-- ───────────────────────────── event store ─────────────────────────────

-- A stream's version is its newest event's (UNIQUE (stream_id, version) below is the
-- compare-and-set, see service/store.py). Earlier schema versions kept a `streams` table of
-- versions, written beside every append: dropped here (its rows are derived from `events`).
DROP TABLE IF EXISTS streams;

-- The log. `position` is global and increasing but NOT gapless and NOT in commit order (a bigserial
-- is drawn at insert time, the row becomes visible at commit). Subscribers therefore never cursor on
-- `position` alone: they read only rows whose `transaction_id` is below the snapshot's xmin (every
-- transaction below it has ended, so no row can still appear behind the cursor) and order by
-- (transaction_id, position). See service/store.py read_all.
CREATE TABLE IF NOT EXISTS events (
    position       bigserial PRIMARY KEY,
    transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL CHECK (version >= 1),
    tenant_id      text        NOT NULL,
    type           text        NOT NULL,
    data           jsonb       NOT NULL,
    metadata       jsonb       NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_transaction_order ON events (transaction_id, position);
CREATE INDEX IF NOT EXISTS events_tenant_order ON events (tenant_id, transaction_id, position);

-- Events are facts: the database itself refuses to change or remove them.
CREATE OR REPLACE FUNCTION slotlog_events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % on events is refused', TG_OP
        USING ERRCODE = 'SL002';
END $$;
CREATE OR REPLACE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION slotlog_events_are_immutable();
CREATE OR REPLACE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION slotlog_events_are_immutable();
CREATE OR REPLACE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION slotlog_events_are_immutable();

-- Raised by the append statement (service/store.py) when a stream was not at its expected
-- version: names the first stream that did not move (`p_moved`: those that did) with its actual
-- version, and aborts the statement, so nothing of it is written. Returns timestamptz only to
-- fit the statement's shape.
DROP FUNCTION IF EXISTS slotlog_conflict(text[], bigint[]);
CREATE OR REPLACE FUNCTION slotlog_conflict(p_streams text[], p_expected bigint[], p_moved text[])
RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    i int;
    actual bigint;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_streams, 1), 0) LOOP
        CONTINUE WHEN p_streams[i] = ANY (p_moved);
        SELECT max(e.version) INTO actual FROM events AS e WHERE e.stream_id = p_streams[i];
        RAISE EXCEPTION 'wrong expected version for stream %', p_streams[i]
            USING ERRCODE = 'SL001',
                  DETAIL = jsonb_build_object('stream', p_streams[i], 'expected', p_expected[i],
                      'actual', coalesce(actual, 0))::text;
    END LOOP;
    RAISE EXCEPTION 'append aborted without a conflicting stream' USING ERRCODE = 'SL003';
END $$;

-- The append itself is one statement sent by service/store.py (see _APPEND_CTE there); earlier
-- schema versions had procedural functions for it.
DROP FUNCTION IF EXISTS slotlog_append(text, text[], bigint[], text[], text[], jsonb[], jsonb[]);
DROP FUNCTION IF EXISTS slotlog_command(text, text[], bigint[], text[], text[], jsonb[], jsonb[], jsonb);

-- ───────────────────────────── tenants and keys ─────────────────────────────

CREATE TABLE IF NOT EXISTS tenants (
    tenant_id  text PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS tenants_name ON tenants (name);

-- Keys are stored as SHA-256 digests; the key itself is shown once, at creation.
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash   bytea PRIMARY KEY,
    key_id     text        NOT NULL UNIQUE,
    tenant_id  text        NOT NULL REFERENCES tenants (tenant_id),
    kind       text        NOT NULL CHECK (kind IN ('secret', 'public')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- ───────────────────────────── idempotency ─────────────────────────────

-- The first answer to a command sent with an Idempotency-Key, written in the same transaction as
-- the command's events, so a retry either finds the answer or finds no trace of the first try.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    tenant_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       int         NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

SELECT pg_advisory_unlock(7320001);

-- ───────────────────────────── read models ─────────────────────────────
-- Built only from events by projections/readmodels.py. Each row is the fold of one stream
-- (`stream_id`), written in the same transaction as that stream's append, so reads see their
-- own writes; `slotlog replay` rebuilds them from position 0. A stream's rows are found by the
-- leading primary-key columns its id determines (Projection.stream_key), so no table needs an
-- index on stream_id: earlier schema versions had one per table, dropped here (one index less to
-- write on every command, and to build on every replay).
SELECT pg_advisory_lock(7320001);

CREATE TABLE IF NOT EXISTS rm_resources (
    tenant_id   text        NOT NULL,
    resource_id text        NOT NULL,
    stream_id   text        NOT NULL,
    body        jsonb       NOT NULL,
    version     bigint      NOT NULL,
    position    bigint      NOT NULL,
    updated_at  timestamptz,
    PRIMARY KEY (tenant_id, resource_id)
);

CREATE TABLE IF NOT EXISTS rm_services (
    tenant_id  text        NOT NULL,
    service_id text        NOT NULL,
    stream_id  text        NOT NULL,
    body       jsonb       NOT NULL,
    version    bigint      NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz,
    PRIMARY KEY (tenant_id, service_id)
);

CREATE TABLE IF NOT EXISTS rm_bookings (
    tenant_id  text        NOT NULL,
    booking_id text        NOT NULL,
    stream_id  text        NOT NULL,
    kind       text        NOT NULL,
    status     text        NOT NULL,
    service_id text,
    session_id text,
    resources  text[]      NOT NULL,
    start_at   timestamptz NOT NULL,
    end_at     timestamptz NOT NULL,
    expires_at timestamptz,
    seats      int,
    -- What the booking holds beyond these columns (policy, customer, notes, metadata, who
    -- cancelled and why), as JSON (projections/readmodels.py BookingDetails; the API builds the
    -- booking from the columns and this; rows of earlier versions hold the whole booking here):
    -- text, not jsonb, because nothing queries inside it, and a bulk load of jsonb spends most
    -- of its time parsing (replay).
    state      text        NOT NULL,
    version    bigint      NOT NULL,
    position   bigint      NOT NULL,
    created_at timestamptz,
    updated_at timestamptz,
    PRIMARY KEY (tenant_id, booking_id)
);
CREATE INDEX IF NOT EXISTS rm_bookings_start ON rm_bookings (tenant_id, start_at, booking_id);
CREATE INDEX IF NOT EXISTS rm_bookings_session ON rm_bookings (tenant_id, session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS rm_bookings_holds ON rm_bookings (expires_at) WHERE status = 'held';
-- Earlier schema versions had `state jsonb`: the same JSON, rendered by jsonb (replay's --verify
-- compares it as JSON, so rows written either way compare equal).
DO $$
BEGIN
    IF (SELECT a.atttypid FROM pg_attribute a
         WHERE a.attrelid = 'rm_bookings'::regclass AND a.attname = 'state') = 'jsonb'::regtype
    THEN
        ALTER TABLE rm_bookings ALTER COLUMN state TYPE text USING state::text;
    END IF;
END $$;

CREATE TABLE IF NOT EXISTS rm_busy (
    tenant_id   text        NOT NULL,
    resource_id text        NOT NULL,
    day         date        NOT NULL,
    claim_id    text        NOT NULL,
    stream_id   text        NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    block_start timestamptz NOT NULL,
    block_end   timestamptz NOT NULL,
    expires_at  timestamptz,
    PRIMARY KEY (tenant_id, resource_id, day, claim_id)
);

CREATE TABLE IF NOT EXISTS rm_sessions (
    tenant_id   text        NOT NULL,
    session_id  text        NOT NULL,
    stream_id   text        NOT NULL,
    resource_id text        NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz NOT NULL,
    status      text        NOT NULL,
    max_seats   int         NOT NULL,
    body        jsonb       NOT NULL,
    claims      jsonb       NOT NULL,
    version     bigint      NOT NULL,
    updated_at  timestamptz,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE INDEX IF NOT EXISTS rm_sessions_start ON rm_sessions (tenant_id, start_at, session_id);

DROP INDEX IF EXISTS rm_resources_stream, rm_services_stream, rm_bookings_stream, rm_busy_stream,
    rm_sessions_stream;

SELECT pg_advisory_unlock(7320001);

-- ───────────────────────────── projections' checkpoints ─────────────────────────────
-- Asynchronous consumers of the log (the projection runner's projections, the webhook
-- dispatcher) remember here the last (transaction_id, position) they applied. A consumer changes
-- its rows and its checkpoint in one transaction, and takes this row FOR UPDATE first, so a crash
-- never loses or double-applies an event and `slotlog replay` can swap a rebuilt table in under
-- the same lock. See projections/runner.py.
SELECT pg_advisory_lock(7320001);

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name           text PRIMARY KEY,
    transaction_id xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- rm_tenant_stats (projections/stats.py): per-tenant event counters, maintained incrementally by
-- the runner (`events = events + n`), so an event applied twice or lost would show.
CREATE TABLE IF NOT EXISTS rm_tenant_stats (
    tenant_id        text        PRIMARY KEY,
    events           bigint      NOT NULL,
    by_type          jsonb       NOT NULL,
    last_position    bigint      NOT NULL,
    last_recorded_at timestamptz
);

-- {"A": 1, "B": 2} + {"B": 1, "C": 5} = {"A": 1, "B": 3, "C": 5}: adds per-type counters.
CREATE OR REPLACE FUNCTION slotlog_add_counts(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k, coalesce((a ->> k)::bigint, 0)
                                        + coalesce((b ->> k)::bigint, 0)), '{}'::jsonb)
    FROM (SELECT jsonb_object_keys(a) UNION SELECT jsonb_object_keys(b)) AS keys (k)
$$;

SELECT pg_advisory_unlock(7320001);

-- ───────────────────────────── webhooks ─────────────────────────────
-- A subscription receives its tenant's matching events in log order, at least once. The
-- dispatcher (an asynchronous consumer, checkpoint 'webhooks') adds one delivery per matching
-- subscription and event; the sender attempts only the oldest pending delivery of each
-- subscription, so event k+1 is never sent before event k was delivered or given up. See
-- service/webhooks.py.
SELECT pg_advisory_lock(7320001);

CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    tenant_id  text        NOT NULL,
    webhook_id text        NOT NULL,
    url        text        NOT NULL,
    events     text[]      NOT NULL,
    secret     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, webhook_id)
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id     bigserial   PRIMARY KEY,
    tenant_id       text        NOT NULL,
    webhook_id      text        NOT NULL,
    event_position  bigint      NOT NULL,
    event_type      text        NOT NULL,
    -- pending → delivered, or → failed once retries have gone on for the give-up period (24 h).
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed')),
    attempt_count   int         NOT NULL DEFAULT 0,
    -- [{at, status_code, error, duration_ms}], oldest first.
    attempts        jsonb       NOT NULL DEFAULT '[]',
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    UNIQUE (tenant_id, webhook_id, event_position),
    FOREIGN KEY (tenant_id, webhook_id)
        REFERENCES webhook_subscriptions (tenant_id, webhook_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_order
    ON webhook_deliveries (tenant_id, webhook_id, delivery_id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending
    ON webhook_deliveries (tenant_id, webhook_id, delivery_id) WHERE status = 'pending';

SELECT pg_advisory_unlock(7320001);
