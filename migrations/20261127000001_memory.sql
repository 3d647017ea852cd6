-- Memory: what the engine remembers, what it still owes a memory backend, and what it gave up
-- on (dead letters, with everything needed to replay them).

-- The built-in memory backend: one row per remembered item, found by full-text search, always
-- within its tenant. The key is the write's idempotency key: writing it again changes nothing.
-- Memories outlive their session (no foreign key): deleting a session's memories is a choice.
CREATE TABLE memories (
    id          UUID PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    session_id  UUID,
    role        TEXT,
    content     TEXT NOT NULL,
    -- The platform's shape: {id, type, role, content, attachments, session_id, persona_id, metadata, idempotency_key}.
    payload     JSONB NOT NULL,
    search      TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    -- Sum of the utility feedback given on recalls of this memory (POST /v1/memory/feedback).
    feedback    DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, key)
);
CREATE INDEX memories_search ON memories USING GIN (search);
CREATE INDEX memories_session ON memories (tenant_id, session_id, created_at DESC);

-- Each write owed to the memory backend, from when a turn asks for it until it is delivered,
-- refused by the policy, or dead-lettered. The workflow (memory/{key}) carries only the key;
-- the payload waits here. A deleted session's pending writes go with it.
CREATE TABLE memory_writes (
    key           TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    session_id    UUID REFERENCES sessions (id) ON DELETE CASCADE,
    turn_id       UUID,
    role          TEXT,
    payload       JSONB NOT NULL,
    -- The request that caused it (the turn's, or a replay's): carried into its event and audit row.
    request_id    TEXT NOT NULL,
    trace_id      TEXT,
    status        TEXT NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'delivered', 'denied', 'dead_lettered')),
    -- Attempts made so far and the last one's error, as the backend said it.
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Moves with every attempt: a pending write quiet for long has lost its workflow (the
    -- worker's sweep starts it again).
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at  TIMESTAMPTZ
);
CREATE INDEX memory_writes_pending ON memory_writes (updated_at) WHERE status = 'pending';

-- Work that exhausted its retries or failed for good, with its full payload, the error and the
-- attempt count. Replaying starts the work again under the same idempotency key; discarding
-- needs a reason. Both are audited.
CREATE TABLE dead_letters (
    id           UUID PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('memory_write')),
    tenant_id    TEXT NOT NULL,
    key          TEXT NOT NULL,
    session_id   UUID,
    payload      JSONB NOT NULL,
    error        TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    status       TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'replayed', 'discarded')),
    resolved_by  TEXT,
    resolution   TEXT,
    resolved_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- At most one open dead letter per piece of work: a retried activity cannot file it twice.
CREATE UNIQUE INDEX dead_letters_open_key ON dead_letters (kind, key) WHERE status = 'open';
CREATE INDEX dead_letters_listing ON dead_letters (status, created_at);

-- What a turn recalled for its prompt ([{key, score, content}], best first), so an operator can
-- see why the model said what it said; NULL before recall ran or when memory was unavailable.
ALTER TABLE turns ADD COLUMN recalled JSONB;
