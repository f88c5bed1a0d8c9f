-- slotlog: the whole database schema. Idempotent: applied by `slotlog migrate` and at every start.
-- Sections: event store · tenants and keys · idempotency · projections' checkpoints · read models.
-- Serialised by an advisory lock so that several processes starting at once do not race on DDL.
SELECT pg_advisory_lock(7320001);

-- ───────────────────────────── event store ─────────────────────────────

-- One row per stream: its current version. Appends compare-and-set this row, which both
-- checks the expected version and serialises concurrent writers of the same stream on the row lock.
CREATE TABLE IF NOT EXISTS streams (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 1)
);

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

-- Append events to one or more streams atomically, in one round trip.
--   p_streams / p_expected: one entry per stream, sorted by stream id by the caller (lock order,
--     so that two multi-stream appends never deadlock). Expected: >= 0 exact version (0 = the
--     stream must not exist), -1 no stream, -2 any, -3 stream exists.
--   p_event_streams / p_types / p_data / p_metadata: one entry per event, in append order.
-- Returns one row per event: (stream_id, version, position, recorded_at), in append order.
-- A mismatch raises SQLSTATE SL001 with DETAIL = {"stream", "expected", "actual"} (actual 0 when
-- the stream does not exist) and, being an exception, writes nothing to any stream.
-- Never ON CONFLICT DO NOTHING on events: a duplicate (stream_id, version) must fail loudly.
CREATE OR REPLACE FUNCTION slotlog_append(
    p_tenant text,
    p_streams text[],
    p_expected bigint[],
    p_event_streams text[],
    p_types text[],
    p_data jsonb[],
    p_metadata jsonb[]
) RETURNS TABLE (stream_id text, version bigint, event_position bigint, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i int;
    n_streams int := coalesce(array_length(p_streams, 1), 0);
    n_events int := coalesce(array_length(p_event_streams, 1), 0);
    s text;
    expected bigint;
    added bigint;
    new_version bigint;
    actual bigint;
    bases jsonb := '{}'::jsonb;
    versions bigint[] := '{}';
    next_version jsonb;
BEGIN
    FOR i IN 1 .. n_streams LOOP
        s := p_streams[i];
        expected := p_expected[i];
        SELECT count(*) INTO added FROM unnest(p_event_streams) AS e(sid) WHERE e.sid = s;
        new_version := NULL;
        IF expected = -2 THEN
            INSERT INTO streams AS st (stream_id, version) VALUES (s, added)
            ON CONFLICT ON CONSTRAINT streams_pkey DO UPDATE SET version = st.version + added
            RETURNING st.version INTO new_version;
        ELSIF expected = -3 THEN
            UPDATE streams AS st SET version = st.version + added WHERE st.stream_id = s
            RETURNING st.version INTO new_version;
        ELSIF expected <= 0 THEN
            INSERT INTO streams AS st (stream_id, version) VALUES (s, added)
            ON CONFLICT ON CONSTRAINT streams_pkey DO NOTHING
            RETURNING st.version INTO new_version;
        ELSE
            UPDATE streams AS st SET version = expected + added
            WHERE st.stream_id = s AND st.version = expected
            RETURNING st.version INTO new_version;
        END IF;
        IF new_version IS NULL THEN
            SELECT st.version INTO actual FROM streams AS st WHERE st.stream_id = s;
            RAISE EXCEPTION 'wrong expected version for stream %', s
                USING ERRCODE = 'SL001',
                      DETAIL = jsonb_build_object('stream', s, 'expected', expected,
                                                  'actual', coalesce(actual, 0))::text;
        END IF;
        bases := bases || jsonb_build_object(s, new_version - added);
    END LOOP;

    FOR i IN 1 .. n_events LOOP
        s := p_event_streams[i];
        next_version := bases -> s;
        IF next_version IS NULL THEN
            RAISE EXCEPTION 'event % names stream % without an expected version', i, s
                USING ERRCODE = 'SL003';
        END IF;
        versions := versions || ((next_version)::bigint + 1);
        bases := bases || jsonb_build_object(s, (next_version)::bigint + 1);
    END LOOP;

    RETURN QUERY
    INSERT INTO events AS ev (stream_id, version, tenant_id, type, data, metadata)
    SELECT e.sid, e.ver, p_tenant, e.typ, e.dat, e.met
    FROM unnest(p_event_streams, versions, p_types, p_data, p_metadata)
         WITH ORDINALITY AS e(sid, ver, typ, dat, met, ord)
    ORDER BY e.ord
    RETURNING ev.stream_id, ev.version, ev.position, ev.recorded_at;
END $$;

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
-- own writes; `slotlog replay` rebuilds them from position 0.
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
CREATE INDEX IF NOT EXISTS rm_resources_stream ON rm_resources (stream_id);

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
CREATE INDEX IF NOT EXISTS rm_services_stream ON rm_services (stream_id);

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
    state      jsonb       NOT NULL,
    version    bigint      NOT NULL,
    position   bigint      NOT NULL,
    created_at timestamptz,
    updated_at timestamptz,
    PRIMARY KEY (tenant_id, booking_id)
);
CREATE INDEX IF NOT EXISTS rm_bookings_stream ON rm_bookings (stream_id);
CREATE INDEX IF NOT EXISTS rm_bookings_start ON rm_bookings (tenant_id, start_at, booking_id);
CREATE INDEX IF NOT EXISTS rm_bookings_session ON rm_bookings (tenant_id, session_id)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS rm_bookings_holds ON rm_bookings (expires_at) WHERE status = 'held';

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
CREATE INDEX IF NOT EXISTS rm_busy_stream ON rm_busy (stream_id);

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
CREATE INDEX IF NOT EXISTS rm_sessions_stream ON rm_sessions (stream_id);
CREATE INDEX IF NOT EXISTS rm_sessions_start ON rm_sessions (tenant_id, start_at, session_id);

-- A command in one round trip: append (as slotlog_append) and, in the same statement and so the
-- same transaction, replace the inline read-model rows of every appended stream. `p_rows` maps a
-- table to {"streams": [...], "rows": [...]}: the rows are folds of the streams computed by the
-- caller (projections/readmodels.py), except for what only the append knows, filled in here
-- from its result: `position` (the stream's last new position), `updated_at` (its last new
-- recorded_at) and, when the row has none yet, `created_at` (its first new recorded_at).
CREATE OR REPLACE FUNCTION slotlog_command(
    p_tenant text,
    p_streams text[],
    p_expected bigint[],
    p_event_streams text[],
    p_types text[],
    p_data jsonb[],
    p_metadata jsonb[],
    p_rows jsonb
) RETURNS TABLE (stream_id text, version bigint, event_position bigint, recorded_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_streams text[];
    v_versions bigint[];
    v_positions bigint[];
    v_times timestamptz[];
BEGIN
    SELECT array_agg(a.stream_id ORDER BY a.event_position),
           array_agg(a.version ORDER BY a.event_position),
           array_agg(a.event_position ORDER BY a.event_position),
           array_agg(a.recorded_at ORDER BY a.event_position)
      INTO v_streams, v_versions, v_positions, v_times
      FROM slotlog_append(p_tenant, p_streams, p_expected, p_event_streams, p_types, p_data,
                          p_metadata) AS a;

    IF p_rows ? 'rm_bookings' THEN
        DELETE FROM rm_bookings AS t WHERE t.stream_id IN
            (SELECT jsonb_array_elements_text(p_rows -> 'rm_bookings' -> 'streams'));
        WITH a AS (
            SELECT x.s AS stream_id, max(x.p) AS last_pos, min(x.t) AS first_at,
                   max(x.t) AS last_at
              FROM unnest(v_streams, v_positions, v_times) AS x(s, p, t) GROUP BY x.s
        )
        INSERT INTO rm_bookings (tenant_id, booking_id, stream_id, kind, status, service_id,
            session_id, resources, start_at, end_at, expires_at, seats, state, version,
            position, created_at, updated_at)
        SELECT r.tenant_id, r.booking_id, r.stream_id, r.kind, r.status, r.service_id,
               r.session_id, r.resources, r.start_at, r.end_at, r.expires_at, r.seats, r.state,
               r.version, coalesce(a.last_pos, r.position), coalesce(r.created_at, a.first_at),
               coalesce(a.last_at, r.updated_at)
          FROM jsonb_populate_recordset(NULL::rm_bookings, p_rows -> 'rm_bookings' -> 'rows') AS r
          LEFT JOIN a ON a.stream_id = r.stream_id;
    END IF;

    IF p_rows ? 'rm_busy' THEN
        DELETE FROM rm_busy AS t WHERE t.stream_id IN
            (SELECT jsonb_array_elements_text(p_rows -> 'rm_busy' -> 'streams'));
        INSERT INTO rm_busy
        SELECT * FROM jsonb_populate_recordset(NULL::rm_busy, p_rows -> 'rm_busy' -> 'rows');
    END IF;

    IF p_rows ? 'rm_sessions' THEN
        DELETE FROM rm_sessions AS t WHERE t.stream_id IN
            (SELECT jsonb_array_elements_text(p_rows -> 'rm_sessions' -> 'streams'));
        WITH a AS (
            SELECT x.s AS stream_id, max(x.p) AS last_pos, min(x.t) AS first_at,
                   max(x.t) AS last_at
              FROM unnest(v_streams, v_positions, v_times) AS x(s, p, t) GROUP BY x.s
        )
        INSERT INTO rm_sessions (tenant_id, session_id, stream_id, resource_id, start_at, end_at,
            status, max_seats, body, claims, version, updated_at)
        SELECT r.tenant_id, r.session_id, r.stream_id, r.resource_id, r.start_at, r.end_at,
               r.status, r.max_seats, r.body, r.claims, r.version,
               coalesce(a.last_at, r.updated_at)
          FROM jsonb_populate_recordset(NULL::rm_sessions, p_rows -> 'rm_sessions' -> 'rows') AS r
          LEFT JOIN a ON a.stream_id = r.stream_id;
    END IF;

    IF p_rows ? 'rm_resources' THEN
        DELETE FROM rm_resources AS t WHERE t.stream_id IN
            (SELECT jsonb_array_elements_text(p_rows -> 'rm_resources' -> 'streams'));
        WITH a AS (
            SELECT x.s AS stream_id, max(x.p) AS last_pos, min(x.t) AS first_at,
                   max(x.t) AS last_at
              FROM unnest(v_streams, v_positions, v_times) AS x(s, p, t) GROUP BY x.s
        )
        INSERT INTO rm_resources (tenant_id, resource_id, stream_id, body, version, position,
            updated_at)
        SELECT r.tenant_id, r.resource_id, r.stream_id, r.body, r.version,
               coalesce(a.last_pos, r.position), coalesce(a.last_at, r.updated_at)
          FROM jsonb_populate_recordset(NULL::rm_resources, p_rows -> 'rm_resources' -> 'rows') AS r
          LEFT JOIN a ON a.stream_id = r.stream_id;
    END IF;

    IF p_rows ? 'rm_services' THEN
        DELETE FROM rm_services AS t WHERE t.stream_id IN
            (SELECT jsonb_array_elements_text(p_rows -> 'rm_services' -> 'streams'));
        WITH a AS (
            SELECT x.s AS stream_id, max(x.p) AS last_pos, min(x.t) AS first_at,
                   max(x.t) AS last_at
              FROM unnest(v_streams, v_positions, v_times) AS x(s, p, t) GROUP BY x.s
        )
        INSERT INTO rm_services (tenant_id, service_id, stream_id, body, version, position,
            updated_at)
        SELECT r.tenant_id, r.service_id, r.stream_id, r.body, r.version,
               coalesce(a.last_pos, r.position), coalesce(a.last_at, r.updated_at)
          FROM jsonb_populate_recordset(NULL::rm_services, p_rows -> 'rm_services' -> 'rows') AS r
          LEFT JOIN a ON a.stream_id = r.stream_id;
    END IF;

    RETURN QUERY SELECT x.s, x.v, x.p, x.t
      FROM unnest(v_streams, v_versions, v_positions, v_times) AS x(s, v, p, t);
END $$;

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
