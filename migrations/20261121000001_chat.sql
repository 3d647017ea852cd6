-- The chat slice: sessions, accepted turns, stored messages, the event stream and the audit log.
-- Every table carries tenant_id and every query is scoped by it.

CREATE TABLE sessions (
    id          UUID PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    persona_id  TEXT,
    -- Number of turns accepted so far; incremented under a row lock to give each turn its place.
    turn_count  INTEGER NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sessions_tenant_updated ON sessions (tenant_id, updated_at DESC, id DESC);

-- One row per accepted POST /v1/session/message. The user's text waits here until the turn's
-- workflow persists it as a message, so the workflow input carries only IDs.
CREATE TABLE turns (
    id               UUID PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    session_id       UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    idempotency_key  TEXT,
    user_message     TEXT NOT NULL,
    persona_id       TEXT,
    request_id       TEXT NOT NULL,
    workflow_id      TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (session_id, seq),
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX turns_open_by_session ON turns (session_id, seq) WHERE status IN ('queued', 'running');

CREATE TABLE messages (
    id          UUID PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    session_id  UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id     UUID NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content     TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('complete', 'cancelled', 'failed')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A retried activity cannot store a turn's message twice.
    UNIQUE (turn_id, role)
);
CREATE INDEX messages_session ON messages (session_id, created_at, id);

-- The stream. The BIGSERIAL id is the SSE event id; dedupe_key makes every write idempotent.
CREATE TABLE session_events (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    session_id  UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id     UUID,
    kind        TEXT NOT NULL,
    payload     JSONB NOT NULL,
    request_id  TEXT,
    trace_id    TEXT,
    dedupe_key  TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX session_events_stream ON session_events (session_id, id);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    request_id  TEXT,
    session_id  UUID,
    turn_id     UUID,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    details     JSONB NOT NULL DEFAULT '{}',
    dedupe_key  TEXT UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_session ON audit_log (tenant_id, session_id, id);
CREATE INDEX audit_log_request ON audit_log (tenant_id, request_id, id);
