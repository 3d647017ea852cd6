-- The typed contract: turns and audit rows carry the trace of the request that caused them,
-- and the open-turn predicate is written once, as a view.

ALTER TABLE turns ADD COLUMN trace_id TEXT;
ALTER TABLE audit_log ADD COLUMN trace_id TEXT;

-- Turns that hold their session: later turns wait for them. `turns_open_by_session` indexes
-- the same predicate.
CREATE VIEW open_turns AS
    SELECT * FROM turns WHERE status IN ('queued', 'running');

-- The recovery sweep looks for open turns that have not moved for a while.
CREATE INDEX turns_open_by_age ON turns (updated_at) WHERE status IN ('queued', 'running');
