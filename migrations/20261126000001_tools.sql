-- Tools: the catalog every tenant's tools come from, per-tenant overrides, and each call with
-- its inputs, decision and output (workflows carry only the call's ID).

CREATE TABLE tools (
    -- What the model calls it: letters, digits, `_` and `-` (OpenAI's function-name rule).
    name               TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    description        TEXT NOT NULL,
    -- JSON Schema of the inputs (an object schema).
    input_schema       JSONB NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('builtin', 'http', 'mcp')),
    -- http: the URL the inputs are POSTed to; mcp: the server's name in the config.
    endpoint           TEXT,
    -- mcp: the tool's own name on its server.
    remote_name        TEXT,
    enabled            BOOLEAN NOT NULL DEFAULT true,
    requires_approval  BOOLEAN NOT NULL DEFAULT false,
    -- The execution profile.
    timeout_ms         INTEGER NOT NULL DEFAULT 30000 CHECK (timeout_ms > 0),
    max_attempts       INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    approval_timeout_ms INTEGER NOT NULL DEFAULT 600000 CHECK (approval_timeout_ms > 0),
    max_concurrent     INTEGER NOT NULL DEFAULT 10 CHECK (max_concurrent > 0),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (kind = 'builtin' OR endpoint IS NOT NULL),
    CHECK (kind <> 'mcp' OR remote_name IS NOT NULL)
);

-- A tenant's own view of a tool: switched off (or on) and approval required (or not) for it.
CREATE TABLE tool_tenant_overrides (
    tenant_id          TEXT NOT NULL,
    tool_name          TEXT NOT NULL REFERENCES tools (name) ON DELETE CASCADE,
    enabled            BOOLEAN,
    requires_approval  BOOLEAN,
    PRIMARY KEY (tenant_id, tool_name)
);

-- The catalog as a tenant sees it: the one place overrides are applied.
CREATE FUNCTION tenant_tools(p_tenant_id TEXT)
RETURNS TABLE (name TEXT, description TEXT, input_schema JSONB, kind TEXT, endpoint TEXT, remote_name TEXT,
               enabled BOOLEAN, requires_approval BOOLEAN, timeout_ms INTEGER, max_attempts INTEGER,
               approval_timeout_ms INTEGER, max_concurrent INTEGER)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.description, t.input_schema, t.kind, t.endpoint, t.remote_name,
           coalesce(o.enabled, t.enabled), coalesce(o.requires_approval, t.requires_approval),
           t.timeout_ms, t.max_attempts, t.approval_timeout_ms, t.max_concurrent
    FROM tools t LEFT JOIN tool_tenant_overrides o ON o.tool_name = t.name AND o.tenant_id = p_tenant_id
$$;

CREATE TABLE tool_calls (
    id               UUID PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    session_id       UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    -- The chat turn whose model asked for it, with the round and the call's place in the
    -- round; none for a direct request (POST /v1/tool/request).
    turn_id          UUID REFERENCES turns (id) ON DELETE CASCADE,
    round            INTEGER,
    index_in_round   INTEGER,
    -- The model's own ID for the call, sent back with the result.
    provider_call_id TEXT,
    tool_name        TEXT NOT NULL,
    -- As the model or the caller sent them (the model's arguments may not be valid JSON).
    arguments        TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    trace_id         TEXT,
    workflow_id      TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'requested'
                     CHECK (status IN ('requested', 'awaiting_approval', 'running', 'succeeded', 'failed',
                                       'denied', 'timed_out', 'cancelled')),
    approval         TEXT CHECK (approval IN ('approved', 'denied')),
    decided_by       TEXT,
    decision_reason  TEXT,
    output           TEXT,
    error            TEXT,
    started_at       TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ,
    -- A retried LLM step stores a round's calls once.
    UNIQUE (turn_id, round, index_in_round)
);
CREATE INDEX tool_calls_turn ON tool_calls (turn_id, round, index_in_round);
CREATE INDEX tool_calls_session ON tool_calls (session_id, created_at);
-- Counting a tenant's running executions of a tool (the profile's concurrency limit).
CREATE INDEX tool_calls_running ON tool_calls (tenant_id, tool_name) WHERE status = 'running';
