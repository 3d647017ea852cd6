-- Uploads and attachments: a file's bytes as they arrive (tus or multipart), the scan's verdict,
-- and where a clean file is kept.

-- One row per uploaded file, from its creation until it is deleted. Only `clean` rows are ever
-- served; a file's tenant is the only one that can see it at all.
CREATE TABLE attachments (
    id               UUID PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    -- The session it was uploaded for (its stream hears the scan's verdict); none for a file
    -- uploaded on its own.
    session_id       UUID REFERENCES sessions (id) ON DELETE CASCADE,
    filename         TEXT NOT NULL,
    content_type     TEXT NOT NULL,
    -- The declared length; NULL while a tus upload defers it (Upload-Defer-Length).
    size_bytes       BIGINT CHECK (size_bytes >= 0),
    -- Bytes received and durable so far: the tus offset.
    received_bytes   BIGINT NOT NULL DEFAULT 0 CHECK (received_bytes >= 0),
    -- tus Upload-Metadata as the client sent it (decoded), returned on HEAD.
    metadata         JSONB NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'uploading'
                     CHECK (status IN ('uploading', 'pending', 'clean', 'quarantined', 'failed')),
    -- The SHA-256 the bytes must have (computed as a multipart body arrived); the scan checks it.
    expected_sha256  TEXT,
    -- The SHA-256 of the bytes the scanner read: the ETag of a clean file.
    sha256           TEXT,
    -- The signature the scanner found, "too large to scan", or why the scan failed.
    verdict          TEXT,
    storage          TEXT CHECK (storage IN ('inline', 's3')),
    -- A small clean file's bytes; a large one is in S3 under object_key.
    content          BYTEA,
    object_key       TEXT,
    -- The request that created it and the one that completed it (for events and audit rows).
    request_id       TEXT NOT NULL,
    trace_id         TEXT,
    -- An upload not finished by then is gone (tus expiration: 410).
    expires_at       TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Moves with every chunk and every step of the scan: a pending file quiet for long has lost
    -- its workflow (the worker's sweep starts it again).
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    scanned_at       TIMESTAMPTZ,
    CHECK (received_bytes <= size_bytes),
    CHECK (status = 'uploading' OR size_bytes = received_bytes)
);
CREATE INDEX attachments_tenant_uploading ON attachments (tenant_id) WHERE status = 'uploading';
CREATE INDEX attachments_pending ON attachments (updated_at) WHERE status = 'pending';
CREATE INDEX attachments_session ON attachments (session_id) WHERE session_id IS NOT NULL;

-- The bytes of a file not yet scanned, in the order they arrived: durable as soon as a chunk is
-- acknowledged, readable by any api process (so any of them can continue an upload) and by the
-- scan. Removed once the scan has stored or refused the file.
CREATE TABLE upload_chunks (
    attachment_id  UUID NOT NULL REFERENCES attachments (id) ON DELETE CASCADE,
    -- Where the chunk starts in the file.
    start_offset   BIGINT NOT NULL CHECK (start_offset >= 0),
    data           BYTEA NOT NULL,
    -- SHA-256 of data as it arrived: the scan checks the bytes it reads against it.
    sha256         BYTEA NOT NULL,
    PRIMARY KEY (attachment_id, start_offset)
);
-- Files are mostly compressed already: storing chunks uncompressed saves the CPU of trying.
ALTER TABLE upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE attachments ALTER COLUMN content SET STORAGE EXTERNAL;

-- The text of a clean text-like file (plain text, Markdown, JSON, CSV), as far as
-- attachment_text_max_bytes: what a message carrying the file gives the model.
ALTER TABLE attachments ADD COLUMN text TEXT, ADD COLUMN text_truncated BOOLEAN NOT NULL DEFAULT false;

-- The files a message carries (`attachments: [{id}]`), in the order sent. The turn waits for
-- their scans; only clean ones reach the model.
ALTER TABLE turns ADD COLUMN attachment_ids UUID[] NOT NULL DEFAULT '{}';
