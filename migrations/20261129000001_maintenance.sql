-- What the periodic jobs (Temporal Schedules running MaintenanceWorkflow) read and write.

-- Gauges the publish-metrics job computes from the database every minute; every api process
-- serves them on /metrics, so a scrape of any of them sees the same figures.
CREATE TABLE gauges (
    name        TEXT PRIMARY KEY,
    help        TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- compact-deltas: when a finished turn's llm.delta events were replaced by one per reply.
ALTER TABLE turns ADD COLUMN compacted_at TIMESTAMPTZ;
CREATE INDEX turns_to_compact ON turns (updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled') AND compacted_at IS NULL;

-- cleanup-sessions: the least recently used sessions first.
CREATE INDEX sessions_by_age ON sessions (updated_at);

-- expire-uploads: unfinished uploads by their expiry.
CREATE INDEX attachments_expiring ON attachments (expires_at) WHERE status = 'uploading';
