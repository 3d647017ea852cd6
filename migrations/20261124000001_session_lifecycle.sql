-- Sessions that are deleted, reset, exported and imported.

-- A session being deleted is gone for every request at once; its data is removed by its
-- deletion workflow once its turns have stopped and its streams have been told.
ALTER TABLE sessions ADD COLUMN deleted_at TIMESTAMPTZ;

-- Where a client opens the session's stream to see a turn from its start: the session's
-- newest event id when the turn was accepted (returned again for a repeated Idempotency-Key).
ALTER TABLE turns ADD COLUMN stream_after BIGINT NOT NULL DEFAULT 0;

-- Imported turns were answered elsewhere: they have no workflow here.
ALTER TABLE turns ALTER COLUMN workflow_id DROP NOT NULL;

-- The view lists the columns turns had when it was made: again, with stream_after.
CREATE OR REPLACE VIEW open_turns AS
    SELECT * FROM turns WHERE status IN ('queued', 'running');
